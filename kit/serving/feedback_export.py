"""`python -m kit feedback export`: every vote of a thread store, once, with its question, answer and branch, as
JSON Lines or CSV, for evaluation (issue 27). The votes' snapshot is all it reads: no transcript is needed."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from kit.threads.feedback import COLUMNS, FeedbackStore
from kit.threads.store import open_store

FORMATS = ("jsonl", "csv")


def write_feedback(rows: Iterable[dict[str, Any]], out: IO[str], format: str = "jsonl") -> int:
    """Write the votes (FeedbackStore.export's rows) as JSON Lines or CSV (the branch as a JSON list in a CSV
    cell); returns how many were written.

    >>> import io
    >>> out = io.StringIO()
    >>> write_feedback([{"thread_id": "t", "message_id": "2", "vote": "up", "branch": ["1", "2"]}], out, "csv")
    1
    >>> out.getvalue().splitlines()[1]
    't,2,,up,,,,"[""1"", ""2""]",,'
    """
    count = 0
    if format == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "branch": json.dumps(row.get("branch", []))})
            count += 1
        return count
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`feedback export` on the kit's command line."""
    feedback = commands.add_parser("feedback", help="the votes on answers kept in a thread store")
    actions = feedback.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="every vote once, with its question, answer and branch")
    export.add_argument("--store", required=True, help="the thread store: a SQLite path, or postgresql://...")
    export.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default) or csv")
    export.add_argument("--output", help="the file to write (default: standard output)")


def run(args: argparse.Namespace) -> int:
    """Export the votes; the count goes to standard error."""
    if (
        not args.store.startswith(("postgresql://", "postgres://"))
        and not Path(args.store.removeprefix("sqlite:///")).is_file()
    ):
        print(f"error: no thread store at {args.store}", file=sys.stderr)
        return 2
    store = open_store(args.store)
    try:
        rows = FeedbackStore(store).export()
        if args.output is None:
            count = write_feedback(rows, sys.stdout, args.format)
        else:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                count = write_feedback(rows, out, args.format)
    finally:
        store.close()
    print(f"{count} votes exported", file=sys.stderr)
    return 0
