"""Many users on one embedded model: the batched engine against the old one-at-a-time engine and the limit.

For 1, 2, 4, 8 and 16 users asking at once (greedy, the same reply length): every user's time to first text,
the tokens/s each user sees (tokens ÷ time from asking to the last text) and the aggregate tokens/s. The old
engine is llama-cpp-python's `create_chat_completion` serving the requests one after another in arrival
order (what kit.model.engine.Engine did before continuous batching). The limit is bench/bench_batching.py's bare
greedy loop for one sequence on the same model and threads. Medians over `--runs`, with min-max spread.

    python -m bench.bench_users [--runs 3] [--tokens 96] [--users 1 2 4 8 16] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import bench_batching
from bench.measure import report
from kit.model.engine import Engine
from kit.model.settings import default_model_path

DRIFT_PROMPTS = [
    f"{verb} {topic}."
    for verb in ("Tell me about", "Write a haiku about", "Explain")
    for topic in ("the sea", "cats", "bread", "the moon", "rain", "trains", "music", "Paris")
]
PROMPTS = bench_batching.USER_PROMPTS
TTFT_TARGET_S = 0.5
ONE_USER_TARGET = 0.9
AGGREGATE_TARGET = 2.0


def _timed(chunks: Iterator[dict[str, Any]], asked: float) -> dict[str, float]:
    first = last = float("nan")
    tokens = 0
    for chunk in chunks:
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = last if tokens == 0 else first
            tokens += 1
    return {"ttft_s": first - asked, "total_s": last - asked, "decode_s": last - first, "tokens": tokens}


def new_engine_round(engine: Engine, users: int, tokens: int) -> list[dict[str, float]]:
    """`users` threads ask the batched engine at once; each one's timings."""
    results: list[dict[str, float]] = [{}] * users
    barrier = threading.Barrier(users + 1)
    options = {"max_tokens": tokens, "temperature": 0, "seed": 1, "repeat_penalty": 1.0}

    def ask(i: int) -> None:
        barrier.wait()
        asked = time.perf_counter()
        # reuse off: every run reads its prompt whole (the same prompts come back run after run)
        results[i] = _timed(engine.stream([{"role": "user", "content": PROMPTS[i]}], reuse=False, **options), asked)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(users)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    return results


def old_engine_round(llama: Any, users: int, tokens: int) -> list[dict[str, float]]:
    """The old engine: one create_chat_completion at a time, first come first served, all asked at once."""
    asked = time.perf_counter()
    results = []
    for i in range(users):
        llama.reset()
        chunks = llama.create_chat_completion(
            [{"role": "user", "content": PROMPTS[i]}], stream=True, max_tokens=tokens, temperature=0, seed=1
        )
        results.append(_timed(chunks, asked))
    return results


def greedy_drift(engine: Engine, tokens: int, together: int = 8) -> dict[str, int]:
    """How many greedy replies differ when decoded in a batch of `together` from the same request alone."""
    options = {"max_tokens": tokens, "temperature": 0, "seed": 1, "repeat_penalty": 1.1}
    questions = [[{"role": "user", "content": prompt}] for prompt in DRIFT_PROMPTS]
    alone = ["".join(engine.chat(q, reuse=False, **options)) for q in questions]
    batched: list[str] = [""] * len(questions)

    def ask(i: int) -> None:
        batched[i] = "".join(engine.chat(questions[i], reuse=False, **options))

    for start in range(0, len(questions), together):
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(start, min(start + together, len(questions)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {"prompts": len(questions), "changed": sum(a != b for a, b in zip(alone, batched, strict=True))}


def summarise(rounds: list[list[dict[str, float]]]) -> dict[str, Any]:
    """Medians (and min-max) over rounds of: TTFT p50/max, per-user tokens/s, aggregate tokens/s."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    per_round = []
    for users in rounds:
        ttfts = sorted(u["ttft_s"] for u in users)
        per_round.append(
            {
                "ttft_p50_s": statistics.median(ttfts),
                "ttft_max_s": ttfts[-1],
                "per_user_tokens_per_s": statistics.median(u["tokens"] / u["total_s"] for u in users),
                # first to last text, as the limit's loop times decoding only (no prompt)
                "decode_tokens_per_s": statistics.median((u["tokens"] - 1) / u["decode_s"] for u in users),
                "aggregate_tokens_per_s": sum(u["tokens"] for u in users) / max(u["total_s"] for u in users),
            }
        )
    return {key: spread([r[key] for r in per_round]) for key in per_round[0]}


def run(users: list[int], tokens: int, runs: int, threads: int | None = None) -> dict[str, Any]:
    """The batched engine here; the old engine and the limit in a child process of their own, run by run.

    Two llama.cpp contexts driven from two OS threads of one process each keep an OpenMP team whose idle
    threads spin: on 2 cores that cut every figure to a third. One engine per process measures each fairly,
    and alternating the two processes run by run lets both see the same load on a shared machine.
    """
    n_threads = threads or os.cpu_count() or 1
    engine = Engine(default_model_path(), n_ctx=1024, n_threads=n_threads)
    engine.load()
    baseline: list[dict[str, Any]] = []
    new_rounds: dict[int, list[list[dict[str, float]]]] = {count: [] for count in users}
    for _ in range(runs):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, "-m", "bench.bench_users", "--old-only", "--json", out.name]
            command += ["--tokens", str(tokens), "--threads", str(n_threads), "--users", *map(str, users)]
            subprocess.run(command, check=True)
            baseline.append(json.loads(Path(out.name).read_text()))
        for count in users:
            new_rounds[count].append(new_engine_round(engine, count, tokens))

    def median_of(key: str) -> dict[str, float]:
        values = [run[key]["tokens_per_s"] for run in baseline]
        return {"tokens_per_s": statistics.median(values), "spread": [min(values), max(values)]}

    results: dict[str, Any] = {"threads": n_threads, "tokens": tokens, "runs": runs, "users": {}}
    results["limit"], results["limit_8"] = median_of("limit"), median_of("limit_8")
    results["prefill_8_s"] = statistics.median(run["prefill_8_s"] for run in baseline)
    for count in users:
        old_rounds = [run["old"][str(count)] for run in baseline]
        results["users"][str(count)] = {"new": summarise(new_rounds[count]), "old": summarise(old_rounds)}
    results["greedy_drift"] = greedy_drift(engine, tokens)
    one = results["users"].get("1")
    if one:
        limit_tps = results["limit"]["tokens_per_s"]
        results["one_user_ratio"] = {
            "new": one["new"]["decode_tokens_per_s"]["median"] / limit_tps,
            "old": one["old"]["decode_tokens_per_s"]["median"] / limit_tps,
        }
    return results


def run_old(users: list[int], tokens: int, n_threads: int) -> dict[str, Any]:
    """One run of the limits and the old engine (create_chat_completion one at a time), in this process alone."""
    from llama_cpp import Llama

    limits = bench_batching.run([1, 8], [n_threads], tokens, runs=1)
    old = Llama(model_path=str(default_model_path()), n_ctx=1024, n_threads=n_threads, verbose=False)
    prompts = [old.tokenize(bench_batching.templated(prompt).encode(), special=True) for prompt in PROMPTS[:8]]
    return {
        "limit": limits[f"{n_threads}x1"],
        "limit_8": limits[f"{n_threads}x8"],  # 8 sequences decoded together bound what 8 users get in aggregate
        "prefill_8_s": bench_batching.prefill_seconds(prompts, n_threads),
        "old": {str(count): old_engine_round(old, count, tokens) for count in users},
    }


def describe(results: dict[str, Any]) -> str:
    """A markdown table of the figures, with the issue's targets checked."""
    lines = [
        f"Many users on the embedded model ({results['threads']} threads, {results['tokens']}-token greedy replies, "
        f"medians of {results['runs']} runs, min-max in brackets). Limit (bare llama.cpp loop, one sequence): "
        f"{results['limit']['tokens_per_s']:.0f} tokens/s.",
        "",
        "| users | engine | TTFT p50 s | TTFT max s | tokens/s per user | aggregate tokens/s |",
        "|---|---|---|---|---|---|",
    ]

    def cell(figure: dict[str, float], digits: int) -> str:
        return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"

    for count, engines in results["users"].items():
        for name, row in engines.items():
            lines.append(
                f"| {count} | {name} | {cell(row['ttft_p50_s'], 2)} | {cell(row['ttft_max_s'], 2)} | "
                f"{cell(row['per_user_tokens_per_s'], 0)} | {cell(row['aggregate_tokens_per_s'], 0)} |"
            )
    if "one_user_ratio" in results:
        ratio = results["one_user_ratio"]
        lines += [
            "",
            f"One user ÷ limit: new {ratio['new']:.2f}, old {ratio['old']:.2f} (target >= {ONE_USER_TARGET}).",
        ]
    eight = results["users"].get("8")
    if eight and "1" in results["users"]:
        aggregate = eight["new"]["aggregate_tokens_per_s"]["median"]
        alone = results["users"]["1"]["new"]["per_user_tokens_per_s"]["median"]
        ceiling = results["limit_8"]["tokens_per_s"] / results["limit"]["tokens_per_s"]
        lines.append(
            f"8 users: TTFT max {eight['new']['ttft_max_s']['max']:.2f} s over all runs (target <= {TTFT_TARGET_S}); "
            f"aggregate {aggregate / alone:.2f}x one user alone (target >= {AGGREGATE_TARGET}); the limit itself, "
            f"8 sequences decoded together against one, gives {ceiling:.2f}x on this machine "
            f"({results['limit_8']['tokens_per_s']:.0f} against {results['limit']['tokens_per_s']:.0f} tokens/s)."
        )
        lines.append(
            f"Reading the 8 prompts alone, in full batches of a bare llama.cpp loop, takes "
            f"{results['prefill_8_s']:.2f} s here: the floor for the last of 8 users' first text."
        )
    if "greedy_drift" in results:
        drift = results["greedy_drift"]
        lines.append(
            f"Greedy replies changed by batching (8 at once vs alone, {results['tokens']} tokens): "
            f"{drift['changed']} of {drift['prompts']}."
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Tokens/s per user and aggregate against the number of users, old engine and new."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [int(c) for c in results["users"]]
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, colour in (("new", "tab:blue"), ("old", "tab:orange")):
        for key, line in (("aggregate_tokens_per_s", "-"), ("per_user_tokens_per_s", "--")):
            values = [results["users"][str(c)][name][key]["median"] for c in counts]
            label = f"{name} engine, {'aggregate' if key.startswith('aggregate') else 'per user'}"
            axis.plot(counts, values, line, marker="o", color=colour, label=label)
    axis.axhline(results["limit"]["tokens_per_s"], color="grey", linestyle=":", label="limit, one sequence")
    axis.axhline(results["limit_8"]["tokens_per_s"], color="black", linestyle=":", label="limit, 8 sequences")
    axis.set_xlabel("users asking at once")
    axis.set_ylabel("tokens/s")
    axis.set_xscale("log", base=2)
    axis.set_xticks(counts, [str(c) for c in counts])
    axis.legend(fontsize=8)
    axis.set_title("Embedded SmolLM2: continuous batching vs one at a time")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--plot", help="write the plot (png) to this file")
    parser.add_argument("--old-only", action="store_true", help="only the limit and the old engine (a child run)")
    args = parser.parse_args()
    if args.old_only:
        Path(args.json).write_text(json.dumps(run_old(args.users, args.tokens, args.threads)))
        return
    results = run(args.users, args.tokens, args.runs, args.threads)
    report(results, describe, args.json, plot, args.plot)


if __name__ == "__main__":
    main()
