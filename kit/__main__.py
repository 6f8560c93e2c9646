"""Command line: `python -m kit serve --demo word|char|chain|agent [--prod] ...`, `python -m kit engine`,
`python -m kit doctor [URL]` and `python -m kit feedback export --store ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from kit.serving import feedback_export
from kit.serving.demo import DEMOS, THREAD_STORE_ENV, build_demo_app
from kit.serving.production import WORKER_CLASSES
from kit.serving.server import PortInUse, bind, serve_forever
from kit.web.probe import DEFAULT_SILENCE_S


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a Deep Chat page that streams a demo reply")
    serve.add_argument("--demo", choices=DEMOS, default="word", help="what to stream (default: word)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--delay-ms", type=float, default=40.0, help="pause between pieces (default: 40)")
    serve.add_argument(  # threads (issue 17)
        "--thread-store",
        help="where conversations live: a SQLite file (default: kit-threads.sqlite here) or postgresql://...",
    )
    prod = serve.add_argument_group("production (gunicorn)")
    prod.add_argument("--prod", action="store_true", help="run under gunicorn: several workers, threads or gevent")
    prod.add_argument(
        "--workers", type=int, default=2, help="worker processes (default: 2; the model demos share one engine process)"
    )
    prod.add_argument(
        "--worker-class",
        choices=tuple(WORKER_CLASSES),
        default="threads",
        help="threads: for the embedded model (default); gevent: for many idle streams",
    )
    prod.add_argument("--threads", type=int, default=32, help="threads per worker = open streams (default: 32)")
    prod.add_argument("--app", help="serve your own app instead of a demo: MODULE:VARIABLE or MODULE:FACTORY(ARGS)")
    _engine_options(prod)
    _engine_parser(commands)
    doctor = commands.add_parser("doctor", help="check that streaming works through a proxy, a hub or a tunnel")
    doctor.add_argument(
        "url",
        nargs="?",
        help="the kit's base URL (or its chat-stream URL) as users reach it; without it, only this machine's checks",
    )
    doctor.add_argument(
        "--silence",
        type=float,
        default=DEFAULT_SILENCE_S,
        help=f"seconds of silence in the probe (default: {DEFAULT_SILENCE_S:g})",
    )
    doctor.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="a request header, e.g. 'Authorization: token TOKEN' for a Jupyter server or hub (repeatable)",
    )
    doctor.add_argument("--cookie", help="cookies to send, as a browser does: 'a=b; c=d'")
    feedback_export.add_parser(commands)  # issue 27
    return parser


def _engine_options(prod: argparse._ArgumentGroup) -> None:
    """`serve --prod`'s options for its engine process (or another server, or a model in every worker)."""
    engine = prod.add_mutually_exclusive_group()
    engine.add_argument(
        "--engine",
        action="store_true",
        help="one engine process for the model beside the workers (default for the model demos; for --app, ask)",
    )
    engine.add_argument("--no-engine", action="store_true", help="each worker loads its own model instead")
    engine.add_argument("--engine-url", help="point the workers at this OpenAI-compatible server (.../v1) instead")
    prod.add_argument("--n-ctx", type=int, help="the engine process's context per slot (default: LlamaSettings)")
    prod.add_argument("--slots", type=int, help="the engine process's slots (default: LlamaSettings)")
    prod.add_argument("--engine-threads", type=int, help="the engine process's llama.cpp threads (default: every core)")
    prod.add_argument(
        "--engine-port",
        type=int,
        default=0,
        help="the engine process's loopback port, for /metrics (default: a free one)",
    )


def _engine_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    engine = commands.add_parser("engine", help="serve the embedded model to web workers (OpenAI-compatible)")
    engine.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    engine.add_argument("--port", type=int, default=8001, help="port (default: 8001)")
    engine.add_argument("--model", help="a .gguf file (default: the embedded SmolLM2)")
    engine.add_argument("--n-ctx", type=int, help="context tokens per slot")
    engine.add_argument("--slots", type=int, help="generations decoded together")
    engine.add_argument("--max-queue", type=int, help="requests waiting beyond the slots before a 503")
    engine.add_argument("--threads", type=int, help="llama.cpp threads (default: every core)")
    engine.add_argument(
        "--coalesce-ms", type=float, help="join a reply's text coming within this window into one chunk (default: 16)"
    )


def _engine(args: argparse.Namespace) -> int:
    from kit.serving.engine_server import run_engine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    given = {"model_path": args.model, "n_ctx": args.n_ctx, "slots": args.slots, "max_queue": args.max_queue}
    given |= {"n_threads": args.threads, "coalesce_ms": args.coalesce_ms}
    run_engine(args.host, args.port, **{key: value for key, value in given.items() if value is not None})
    return 0


def _header(text: str) -> tuple[str, str]:
    from kit.serving.doctor import parse_header

    try:
        return parse_header(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _serve_prod(args: argparse.Namespace) -> int:
    from kit.serving.launcher import ENGINE_URL_ENV, SupervisedEngine, run_with_engine
    from kit.serving.production import MODEL_DEMOS, gunicorn_command, run

    app = args.app or f"kit.serving.production:demo_app({args.demo!r}, {args.delay_ms!r})"
    command = gunicorn_command(
        app, host=args.host, port=args.port, workers=args.workers, worker_class=args.worker_class, threads=args.threads
    )
    if args.engine_url:
        os.environ[ENGINE_URL_ENV] = args.engine_url
    elif args.engine or (args.app is None and args.demo in MODEL_DEMOS and not args.no_engine):
        names = {"n_ctx": "n-ctx", "slots": "slots", "engine_threads": "threads"}
        extra = [f"--{option}={value}" for name, option in names.items() if (value := getattr(args, name))]
        return run_with_engine(command, SupervisedEngine(extra, host="127.0.0.1", port=args.engine_port))
    run(command)
    return 0  # not reached: gunicorn replaces this process


def _doctor(args: argparse.Namespace) -> int:
    from kit.serving.doctor import diagnose, diagnose_here, llama_build_finding

    if args.url is None:
        diagnosis = diagnose_here()
    else:
        diagnosis = diagnose(args.url, silence_s=args.silence, headers=dict(args.header), cookie=args.cookie)
        diagnosis.findings.append(llama_build_finding())
    print(diagnosis.report())
    return 0 if diagnosis.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "thread_store", None):  # threads (issue 17): gunicorn workers inherit it too
        os.environ[THREAD_STORE_ENV] = args.thread_store
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "engine":
        return _engine(args)
    if args.command == "feedback":
        return feedback_export.run(args)
    if args.prod:
        return _serve_prod(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_demo_app(args.demo, args.delay_ms)
    try:
        server = bind(app, args.host, args.port)
    except PortInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Serving the {args.demo} demo on http://{args.host}:{server.server_port}/ (Ctrl-C stops)", file=sys.stderr)
    serve_forever(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
