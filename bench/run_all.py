"""`make bench`: every benchmark in one run; prints the table and writes docs/benchmarks.{md,json,png}."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    bench_approvals,
    bench_conversations,
    bench_documents,
    bench_engine_process,
    bench_observability,
    bench_rejoin,
    bench_threads,
    bench_users,
    bench_words,
    browser,
    concurrency,
    pipeline,
    report,
)
from bench.measure import ROOT, server_process

DOCS = ROOT / "docs"


def in_own_process(module: str, *args: str) -> dict[str, Any]:
    """A benchmark run as its own process (it loads the model, or starts servers), its figures read from the JSON
    file it writes."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", f"bench.{module}", *args, "--json", out.name], cwd=ROOT, check=True)
        return json.loads(Path(out.name).read_text())


def model_figures() -> dict[str, Any]:
    """The model benchmark: the kit against llama-cpp-python's own throughput."""
    return in_own_process("bench_model")


def users_figures() -> dict[str, Any]:
    """Many users on the embedded model, batched and one at a time."""
    return in_own_process("bench_users", "--plot", str(DOCS / "bench_users.png"))


def threads_figures(runs: int) -> dict[str, Any]:
    """Threads: turn 10 against turn 1, and reloads on SQLite and PostgreSQL."""
    return in_own_process("bench_threads", "--runs", str(runs), "--postgres", "auto")


def approvals_figures(runs: int) -> dict[str, Any]:
    """Approvals: click on Approve to the continuation's first text, in chromium."""
    return in_own_process("bench_approvals", "--runs", str(runs))


def engine_process_figures(runs: int) -> dict[str, Any]:
    """One model for every worker: 8 users against 1 in process and behind 4 workers, memory, Stop."""
    return in_own_process("bench_engine_process", "--runs", str(runs))


def documents_figures(runs: int) -> dict[str, Any]:
    """Chat with a document: an attached file against the same text pasted."""
    return in_own_process("bench_documents", "--runs", str(runs))


def rejoin_figures(streams: int, tokens: int, reloads: int) -> dict[str, Any]:
    """The event log's cost, and a reload's rejoin in chromium on one worker and across two on PostgreSQL."""
    options = ["--streams", str(streams), "--tokens", str(tokens), "--reloads", str(reloads), "--postgres", "auto"]
    return in_own_process("bench_rejoin", *options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (medians and spreads over them)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the script out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the table's output
    started = time.perf_counter()
    results: dict[str, Any] = {"runs": args.runs}
    chars = 20_000 if args.quick else 100_000
    results["pipeline"] = pipeline.run(runs=args.runs, chars=chars, duration_s=1.5 if args.quick else 4.0)
    results["browser"] = browser.run(runs=args.runs, chars=4_000 if args.quick else 20_000)
    results["model"] = model_figures()
    DOCS.mkdir(exist_ok=True)
    results["users"] = users_figures()
    results["words"] = bench_words.run(runs=max(args.runs, 5))
    results["threads"] = threads_figures(args.runs)
    results["approvals"] = approvals_figures(max(20, 5 * args.runs))
    results["engine_process"] = engine_process_figures(args.runs)
    results["documents"] = documents_figures(args.runs)
    # Replies that survive the network (issue 26): the event log's cost, and a reload's rejoin in chromium.
    streams, tokens = (200, 200) if args.quick else (1000, 200)
    results["rejoin"] = rejoin_figures(streams, tokens, reloads=max(5, 2 * args.runs))
    with server_process("bench.targets", "--chars", "1000") as server:
        development = concurrency.held_streams_memory(f"{server.url}/idle/chat-stream", server.pid)
    results["concurrency"] = {"development (werkzeug threads)": development}
    for worker_class, label in (
        ("threads", "production (gunicorn 2 x 128 threads)"),
        ("gevent", "production (gunicorn 2 gevent workers)"),
    ):
        with concurrency.production_server(worker_class) as server:
            results["concurrency"][label] = concurrency.held_streams_memory(f"{server.url}/chat-stream", server.pid)
    conversations = bench_conversations.section(results, DOCS)  # its own process; the figures go into results
    results["observability"] = bench_observability.run(runs=max(args.runs, 3), streams=100 if args.quick else 1000)
    bench_observability.plot(results["observability"], DOCS / "bench_observability.png")
    results["seconds"] = time.perf_counter() - started
    DOCS.mkdir(exist_ok=True)
    table = report.markdown(results) + "\n\n" + bench_words.describe(results["words"]) + "\n"
    table += "\n" + bench_users.describe(results["users"]) + "\n\n![many users](bench_users.png)\n"
    table += "\n" + bench_threads.describe(results["threads"]) + "\n"
    table += "\n" + conversations
    table += "\n" + bench_approvals.describe(results["approvals"]) + "\n"
    table += "\n### Observability\n\n" + bench_observability.describe(results["observability"])
    table += "\n\n![observability](bench_observability.png)\n"
    table += "\n" + bench_engine_process.describe(results["engine_process"]) + "\n"
    table += "\n" + bench_documents.describe(results["documents"]) + "\n"
    table += "\n## Replies that survive the network\n\n" + bench_rejoin.describe(results["rejoin"]) + "\n"
    (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=1))
    (DOCS / "benchmarks.md").write_text(
        f"# Benchmark results\n\nReproduce with `make bench` ({results['seconds']:.0f} s on this 2-core machine; "
        f"{args.runs} runs per figure).\n\n{table}\n![benchmarks](benchmarks.png)\n"
    )
    report.plots(results, DOCS)
    print(table)
    print(f"total {results['seconds']:.0f} s; written to {DOCS.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
