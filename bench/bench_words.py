"""Word splitting speed: 100,000 characters without whitespace, fed in 4-character pieces.

The limit beside it is the regex pass alone (the same pattern run once over each piece and its context, no
bookkeeping): what any splitter built on that regex must pay. `python -m bench.bench_words` prints both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.measure import summary
from kit.pipeline.granularity import _WORD_CONTEXT, _WORD_GROUP, split_words

TEXTS = {
    "Chinese (a word per character)": "中文的流式输出" * (100_000 // 7),
    "one Latin word": "a" * 100_000,
    "Thai": "สวัสดีครับ" * 10_000,
}
PIECE = 4


def pieces_of(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


def kit_split(pieces: list[str]) -> None:
    for _ in split_words(pieces):
        pass


def regex_only(pieces: list[str]) -> None:
    recent = ""
    for piece in pieces:
        window = recent + piece
        _WORD_GROUP.findall(window, len(recent))
        recent = window[-_WORD_CONTEXT:]


def timed(work: Callable[[list[str]], None], pieces: list[str], runs: int) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        work(pieces)
        seconds.append(time.perf_counter() - started)
    return summary(seconds)


def run(runs: int = 5) -> dict[str, Any]:
    """Milliseconds per 100,000 characters, the kit's splitter and the bare regex pass, per text."""
    figures = {}
    for name, text in TEXTS.items():
        pieces = pieces_of(text)
        figures[name] = {
            "chars": len(text),
            "kit_ms": {k: v * 1000 for k, v in timed(kit_split, pieces, runs).items() if k != "n"},
            "regex_only_ms": {k: v * 1000 for k, v in timed(regex_only, pieces, runs).items() if k != "n"},
        }
    return figures


def describe(figures: dict[str, Any]) -> str:
    lines = [f"| word splitting, {PIECE}-char pieces | chars | kit ms (median, min-max) | regex pass alone ms |"]
    lines.append("| --- | --- | --- | --- |")
    for name, row in figures.items():
        kit, bare = row["kit_ms"], row["regex_only_ms"]
        lines.append(
            f"| {name} | {row['chars']} | {kit['median']:.1f} ({kit['min']:.1f}-{kit['max']:.1f}) "
            f"| {bare['median']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe(run()))
