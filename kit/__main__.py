"""Command line: `python -m kit serve --demo word|char|chain ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from flask import Flask

from kit.app import create_app
from kit.demo import demo_source
from kit.server import PortInUse, bind, serve_forever

DEMOS = ("word", "char", "chain")


def build_demo_app(demo: str, delay_ms: float) -> Flask:
    """The app behind `serve --demo NAME`."""
    if demo == "chain":  # a LangChain chain on the embedded model; LangChain is imported for this demo only
        from kit.chains import demo_chain

        return create_app(demo_chain(), title="Deep Chat kit: chain demo")
    return create_app(demo_source(demo, delay_ms), granularity=demo, title=f"Deep Chat kit: {demo} demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a Deep Chat page that streams a demo reply")
    serve.add_argument("--demo", choices=DEMOS, default="word", help="what to stream (default: word)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--delay-ms", type=float, default=40.0, help="pause between pieces (default: 40)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
