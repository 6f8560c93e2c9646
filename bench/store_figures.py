"""What the thread-store benchmarks share: each figure on SQLite and, given a URL, on PostgreSQL; a table of
medians with their spread; the command line that starts a throwaway PostgreSQL cluster for them."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import report
from kit.threads.store import SqliteThreadStore, ThreadStore

StoreFigures = Callable[[ThreadStore, str, int], dict[str, Any]]
"""Figures measured on one store: (store, its label, runs) to {name: {"median", "min", "max"}}."""


def on_each_store(figures_of: StoreFigures, runs: int, postgres_url: str | None) -> dict[str, Any]:
    """The figures on a temporary SQLite file, then on PostgreSQL when a URL is given."""
    with tempfile.TemporaryDirectory() as folder:
        figures = figures_of(SqliteThreadStore(Path(folder) / "t.sqlite"), "SQLite", runs)
    if postgres_url is not None:
        from kit.threads.store import PostgresThreadStore

        store = PostgresThreadStore(postgres_url)
        figures |= figures_of(store, "PostgreSQL", runs)
        store.close()
    return figures


def describe_medians(title: str, figures: dict[str, Any]) -> str:
    """The figures as a markdown table; a time to first text (`..._ttft_s`) in milliseconds."""
    lines = [f"| {title} | median (min-max) |", "| --- | --- |"]
    for name, value in figures.items():
        scale = 1000 if name.endswith("ttft_s") else 1
        unit = name.replace("ttft_s", "TTFT ms")
        lines.append(
            f"| {unit} | {value['median'] * scale:,.0f} ({value['min'] * scale:,.0f}-{value['max'] * scale:,.0f}) |"
        )
    return "\n".join(lines)


def main(doc: str | None, run: Callable[[int, str | None], dict[str, Any]], describe: Callable[[Any], str]) -> None:
    """`--runs`, `--postgres URL|auto` and `--json`, then the figures printed (and written)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--postgres", help="a postgresql:// URL for the PostgreSQL figures, or `auto` for a throwaway local cluster"
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    from tests.postgres import postgres_url  # Debian's postgresql, as the tests start it

    with postgres_url(args.postgres) as url:
        figures = run(args.runs, url)
    report(figures, describe, args.json)
