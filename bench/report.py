"""Turn benchmark results into the markdown table and the PNG plots under docs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(figure: dict[str, float], scale: float = 1.0, digits: int = 0) -> str:
    median, low, high = (figure[key] * scale for key in ("median", "min", "max"))
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def markdown(results: dict[str, Any]) -> str:
    """The results table: medians, with min-max over the runs in brackets."""
    lines = ["| figure | value: median (min-max over runs) |", "| --- | --- |"]
    pipeline = results.get("pipeline")
    if pipeline:
        for route, label in (
            ("kit", "kit, coalesced (default)"),
            ("per-piece", "kit, coalescing off"),
            ("naive", "naive baseline (one event per char)"),
        ):
            figures = pipeline["capacity"][route]
            lines.append(f"| capacity, {label}: chars/s | {_fmt(figures['chars_per_s'])} |")
            lines.append(f"| capacity, {label}: events/s | {_fmt(figures['events_per_s'])} |")
        for name, label in (
            ("kit_vs_naive_chars", "kit coalesced ÷ naive"),
            ("per_piece_vs_naive_chars", "kit per-piece ÷ naive"),
        ):
            lines.append(f"| chars/s ratio, {label} (same run) | {_fmt(pipeline['ratios'][name], digits=2)} |")
        for label, figure in pipeline["latency_ms"].items():
            lines.append(
                f"| added latency at {label}: p50 / p99 ms (n={figure['n']}) | "
                f"{figure['median']:.2f} / {figure['p99']:.2f} |"
            )
    browser = results.get("browser")
    if browser:
        for window, figures in browser["windows"].items():
            label = "per-character events" if window == "0 ms" else f"coalesced ({window} window)"
            lines.append(
                f"| browser, {browser['chars']:,} chars at {browser['chars_per_s']:,.0f}/s, {label}: "
                f"render lag after last byte, ms | {_fmt(figures['render_lag_ms'])} |"
            )
            lines.append(
                f"| browser, {label}: main-thread long tasks (count / total ms) | "
                f"{_fmt(figures['long_tasks'])} / {_fmt(figures['long_task_ms'])} |"
            )
    model = results.get("model")
    if model:
        for key, value in model.get("table", {}).items():
            lines.append(f"| model: {key} | {value} |")
    for server, figures in results.get("concurrency", {}).items():
        top = figures["rows"][-1]
        lines.append(
            f"| {server}: {top['streams']} open streams, RSS MB / marginal MB per stream / refused | "
            f"{top['rss_mb']:.0f} / {figures['mb_per_stream']:.3f} / {top['refused']} |"
        )
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], directory: Path) -> list[Path]:
    """Write the PNG plots; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    pipeline, browser = results.get("pipeline"), results.get("browser")
    if pipeline and browser:
        figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
        routes = ["kit", "per-piece", "naive"]
        bars = left.bar(
            ["kit\ncoalesced", "kit\nper-piece", "naive\nbaseline"],
            [pipeline["capacity"][r]["chars_per_s"]["median"] for r in routes],
            color=["C0", "C1", "C3"],
        )
        left.bar_label(bars, fmt="{:,.0f}")
        left.set_title("pipeline capacity, chars/s (one stream)")
        labels = list(pipeline["latency_ms"])
        middle.bar(range(len(labels)), [pipeline["latency_ms"][k]["p99"] for k in labels], color="C1", label="p99")
        middle.bar(range(len(labels)), [pipeline["latency_ms"][k]["median"] for k in labels], color="C0", label="p50")
        middle.set_xticks(range(len(labels)), [k.replace(" ", "\n", 1) for k in labels], fontsize=7)
        middle.set_title("added latency, ms (source yield → client)")
        middle.legend()
        windows = list(browser["windows"])
        bars = right.bar(
            [f"{w}\nwindow" for w in windows],
            [browser["windows"][w]["render_lag_ms"]["median"] for w in windows],
            color=["C3", "C0"],
        )
        right.bar_label(bars, fmt="{:,.0f} ms")
        right.set_title(
            f"Deep Chat render lag after last byte, ms\n({browser['chars']:,} chars at {browser['chars_per_s']:,.0f}/s)"
        )
        figure.tight_layout()
        path = directory / "benchmarks.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written
