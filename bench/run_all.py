"""`make bench`: every benchmark in one run; prints the table and writes docs/benchmarks.{md,json,png}."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    bench_approvals,
    bench_branches,
    bench_conversations,
    bench_documents,
    bench_engine_process,
    bench_observability,
    bench_peer,
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
log = logging.getLogger(__name__)


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


def concurrency_figures() -> dict[str, Any]:
    """Memory of held streams on the development server and on both production worker classes."""
    with server_process("bench.targets", "--chars", "1000") as server:
        development = concurrency.held_streams_memory(f"{server.url}/idle/chat-stream", server.pid)
    figures = {"development (werkzeug threads)": development}
    for worker_class, label in (
        ("threads", "production (gunicorn 2 x 128 threads)"),
        ("gevent", "production (gunicorn 2 gevent workers)"),
    ):
        with concurrency.production_server(worker_class) as server:
            figures[label] = concurrency.held_streams_memory(f"{server.url}/chat-stream", server.pid)
    return figures


def observability_figures(runs: int, quick: bool) -> dict[str, Any]:
    """Metrics and traces: server CPU per token on 1,000 concurrent streams, off, metrics and traces in one run."""
    streams = "100" if quick else "1000"
    plot = str(DOCS / "bench_observability.png")
    return in_own_process("bench_observability", "--runs", str(max(runs, 3)), "--streams", streams, "--plot", plot)


def conversations_figures() -> dict[str, Any]:
    return in_own_process("bench_conversations", "--plot", str(DOCS / "bench_conversations.png"))


def sections(runs: int, quick: bool) -> dict[str, Callable[[], Any]]:
    """Every figure of `make bench`, by the key it has in docs/benchmarks.json, in the order they run."""
    chars = 20_000 if quick else 100_000
    # Replies that survive the network (issue 26): the event log's cost, and a reload's rejoin in chromium.
    streams, tokens = (200, 200) if quick else (1000, 200)
    return {
        "pipeline": lambda: pipeline.run(runs=runs, chars=chars, duration_s=1.5 if quick else 4.0),
        "browser": lambda: browser.run(runs=runs, chars=4_000 if quick else 20_000),
        "model": model_figures,
        "users": users_figures,
        "words": lambda: bench_words.run(runs=max(runs, 5)),
        "threads": lambda: threads_figures(runs),
        "approvals": lambda: approvals_figures(max(20, 5 * runs)),
        "engine_process": lambda: engine_process_figures(runs),
        "peer": lambda: in_own_process("bench_peer", "--runs", str(runs)),
        "documents": lambda: documents_figures(runs),
        "rejoin": lambda: rejoin_figures(streams, tokens, reloads=max(5, 2 * runs)),
        # Branches (issue 27): a switch of a 50-message thread in chromium, a regenerated turn 10 on the model.
        "branches": lambda: in_own_process("bench_branches", "--runs", str(runs), "--postgres", "auto"),
        "concurrency": concurrency_figures,
        "conversations": conversations_figures,
        "observability": lambda: observability_figures(runs, quick),
    }


def _with_plot(describe: Callable[[Any], str], picture: str, title: str) -> Callable[[Any], str]:
    return lambda figures: f"{describe(figures)}\n\n![{title}]({picture})"


# Each section of docs/benchmarks.md after the main table: the figures' key and how they read.
PARTS: list[tuple[str, Callable[[Any], str]]] = [
    ("words", bench_words.describe),
    ("users", _with_plot(bench_users.describe, "bench_users.png", "many users")),
    ("threads", bench_threads.describe),
    ("conversations", _with_plot(bench_conversations.describe, "bench_conversations.png", "long conversations")),
    ("approvals", bench_approvals.describe),
    (
        "observability",
        lambda f: (
            "### Observability\n\n"
            + _with_plot(bench_observability.describe, "bench_observability.png", "observability")(f)
        ),
    ),
    ("engine_process", bench_engine_process.describe),
    ("peer", bench_peer.describe),
    ("documents", bench_documents.describe),
    ("rejoin", lambda f: "## Replies that survive the network\n\n" + bench_rejoin.describe(f)),
    ("branches", lambda f: "## Branches: regenerate, edit, switch\n\n" + bench_branches.describe(f)),
]


def document(results: dict[str, Any]) -> str:
    """docs/benchmarks.md's body from every section's figures (a section not measured yet says how to)."""
    parts = [report.markdown(results)]
    for key, describe in PARTS:
        measured = key in results
        parts.append(describe(results[key]) if measured else f"_`{key}`: not measured yet (`--only {key}`)._")
    return "\n\n".join(parts) + "\n"


def this_machine() -> str:
    """The CPU the figures come from, as docs/benchmarks.md names it: machines of this kind differ 2-3x in speed."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{os.cpu_count()}-core {line.split(':', 1)[1].strip()}"
    return f"{os.cpu_count()}-core {platform.machine()}"


def where_and_when(results: dict[str, Any], names: list[str]) -> str:
    """Which sections last ran on which machine and day (a section re-run with `--only` keeps the others').

    >>> where_and_when({"section_dates": {"a": "d1", "b": "d1"}, "section_machines": {"a": "m", "b": "m"}}, ["a", "b"])
    'Last run: a, b on a m, d1.'
    """
    dates, machines = results.get("section_dates", {}), results.get("section_machines", {})
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        key = (machines.get(name, "machine not recorded"), dates.get(name, "date not recorded"))
        groups.setdefault(key, []).append(name)
    return "Last run: " + "; ".join(f"{', '.join(group)} on a {m}, {d}" for (m, d), group in groups.items()) + "."


def write_markdown(results: dict[str, Any], names: list[str]) -> None:
    """docs/benchmarks.md from the figures (also after editing docs/benchmarks.json by hand)."""
    (DOCS / "benchmarks.md").write_text(
        f"# Benchmark results\n\nReproduce with `make bench` ({results['seconds']:.0f} s for every section on 2 cores; "
        f"{results['runs']} runs per figure). {where_and_when(results, names)} Each section's comparisons come "
        f"from one run of that section.\n\n{document(results)}\n![benchmarks](benchmarks.png)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (medians and spreads over them)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the script out")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SECTION",
        help="run these sections only and keep the others' figures from docs/benchmarks.json (their runs are noted)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the table's output
    started = time.perf_counter()
    everything = sections(args.runs, args.quick)
    chosen = args.only or list(everything)
    unknown = sorted(set(chosen) - set(everything))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(everything)}")
    stored = DOCS / "benchmarks.json"
    results: dict[str, Any] = json.loads(stored.read_text()) if args.only and stored.exists() else {}
    DOCS.mkdir(exist_ok=True)
    run_dates = results.get("section_dates", {})
    machines = results.get("section_machines", {})
    failed = []
    for name in everything:
        if name in chosen:
            try:
                results[name] = everything[name]()
            except Exception:  # the other sections' figures are still written; the run ends failed
                log.exception("section %s failed", name)
                failed.append(name)
                continue
            run_dates[name] = time.strftime("%Y-%m-%d")
            machines[name] = this_machine()
    results["section_dates"], results["section_machines"] = run_dates, machines
    results["runs"] = args.runs
    seconds = time.perf_counter() - started
    results["seconds"] = seconds if not args.only else results.get("seconds", seconds)
    (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, list(everything))
    report.plots(results, DOCS)
    print(document(results))
    print(f"total {seconds:.0f} s; written to {DOCS.relative_to(ROOT)}/")
    if failed:
        raise SystemExit(f"sections failed (figures kept from before, if any): {', '.join(failed)}")


if __name__ == "__main__":
    main()
