"""The embedded model, raw and through the kit: tokens/s ratio and the time to first token the kit adds.

Fair by construction: the same Llama object, prompt, max_tokens, greedy decoding (temperature 0) and seed;
each generation starts from an empty context; raw and kit runs alternate, and medians are reported.
"Through the kit" is a real server on loopback (`kit.serving.server.BackgroundServer`), read by
`kit.serving.client` in a process of its own (as a browser would be; `--client-in-process` to share the server's).

    python -m bench.bench_model [--runs 7] [--max-tokens 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from kit import create_app
from kit.model.chat_model import ChatLlama
from kit.model.engine import engine_for
from kit.model.settings import LlamaSettings
from kit.model.source import LlamaSource
from kit.serving.client import Received, Reply, chat_body, iter_stream
from kit.serving.server import BackgroundServer

PROMPT = "Write a long story about a dragon who learns to bake bread."
TARGET_RATIO = 0.97
TARGET_ADDED_TTFT_MS = 5.0


@dataclass(frozen=True)
class Run:
    ttft_s: float  # request (or call) to first text
    total_s: float  # request (or call) to last text
    chars: int
    model_ttft_s: float  # create_chat_completion called to its first text, timed inside (ModelClock)
    model_total_s: float  # ... to its last text


class ModelClock:
    """Times every create_chat_completion of the model from the inside: call to first text.

    The model's own TTFT varies by tens of ms with the load on 2 shared cores; subtracting it, run by run,
    from what a client sees leaves the kit's share (HTTP, queue hand-offs, SSE) free of that noise.
    """

    def __init__(self, llama: Any) -> None:
        self.last_ttft_s = self.last_total_s = float("nan")
        original = llama.create_chat_completion

        def timed(*args: Any, **kwargs: Any) -> Any:
            called = time.perf_counter()
            chunks = original(*args, **kwargs)
            return self._watch(chunks, called) if kwargs.get("stream") else chunks

        llama.create_chat_completion = timed

    def _watch(self, chunks: Iterator[dict[str, Any]], called: float) -> Iterator[dict[str, Any]]:
        waiting = True
        for chunk in chunks:
            if chunk["choices"][0]["delta"].get("content"):
                self.last_total_s = time.perf_counter() - called
                if waiting:
                    self.last_ttft_s, waiting = self.last_total_s, False
            yield chunk


@dataclass(frozen=True)
class Summary:
    ttft_ms: float
    tokens_per_s: float  # max_tokens / total time (what a reader waits for)
    decode_tokens_per_s: float  # (max_tokens - 1) / (last - first text)
    runs: int
    ttft_ms_spread: tuple[float, float]
    tokens_per_s_spread: tuple[float, float]


def raw_run(llama: Any, settings: LlamaSettings, clock: ModelClock) -> Run:
    """llama-cpp-python alone: create_chat_completion(stream=True) on a Llama of its own, the engine idle."""
    llama.reset()  # every run reads its prompt whole, as the kit's runs do (prefix_reuse=False)
    started = time.perf_counter()
    first = last = 0.0
    chars = 0
    messages = [{"role": "user", "content": PROMPT}]
    for chunk in llama.create_chat_completion(messages, stream=True, **settings.options()):
        text = chunk["choices"][0]["delta"].get("content")
        if text:
            last = time.perf_counter()
            first = first or last
            chars += len(text)
        reason = chunk["choices"][0].get("finish_reason")
        if reason not in (None, "length"):
            raise SystemExit(f"the reply stopped early ({reason}): pick a prompt that runs to max_tokens")
    return Run(first - started, last - started, chars, clock.last_ttft_s, clock.last_total_s)


def read_stream(url: str, client: httpx.Client) -> tuple[float, float, float, int]:
    """One chat through the kit's server, as a client sees it: (POST sent, first text, last text, chars)."""
    started = first = last = 0.0
    chars = 0
    for item in iter_stream(url, chat_body(PROMPT), client=client):
        if isinstance(item, Reply):
            started = item.started
            if item.status != 200:
                raise SystemExit(f"the kit answered {item.status}")
        elif isinstance(item, Received) and item.payload and item.payload.get("text"):
            last = item.at
            first = first or last
            chars += len(item.payload["text"])
    return started, first, last, chars


class ClientProcess:
    """kit.serving.client in a process of its own, as a browser would be: its parsing does not share the server's
    GIL. perf_counter is CLOCK_MONOTONIC on Linux, so its times compare with the server's."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, url: str) -> tuple[float, float, float, int]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(url + "\n")
        self._process.stdin.flush()
        started, first, last, chars = json.loads(self._process.stdout.readline())
        return started, first, last, int(chars)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(30)


def client_loop() -> None:
    """`--client`: read one URL per line, answer each with the JSON of read_stream."""
    with httpx.Client(timeout=120) as client:
        for line in sys.stdin:
            print(json.dumps(read_stream(line.strip(), client)), flush=True)


def kit_run(url: str, read: Callable[[str], tuple[float, float, float, int]], clock: ModelClock) -> Run:
    started, first, last, chars = read(url)
    return Run(first - started, last - started, chars, clock.last_ttft_s, clock.last_total_s)


def summarise(runs: list[Run], max_tokens: int) -> Summary:
    ttfts = [run.ttft_s * 1000 for run in runs]
    rates = [max_tokens / run.total_s for run in runs]
    decode = [(max_tokens - 1) / (run.total_s - run.ttft_s) for run in runs]
    return Summary(
        ttft_ms=statistics.median(ttfts),
        tokens_per_s=statistics.median(rates),
        decode_tokens_per_s=statistics.median(decode),
        runs=len(runs),
        ttft_ms_spread=(min(ttfts), max(ttfts)),
        tokens_per_s_spread=(min(rates), max(rates)),
    )


def paired(runs: list[Run], raws: list[Run], compare: Callable[[Run, Run], float]) -> float:
    """The median, over rounds, of a figure comparing a path's run with the raw run of the same round."""
    return statistics.median(compare(run, raw) for run, raw in zip(runs, raws, strict=True))


def added_ttft_ms(runs: list[Run]) -> float:
    """Median over runs of the time to first text a client saw beyond the model's own TTFT."""
    return statistics.median((run.ttft_s - run.model_ttft_s) * 1000 for run in runs)


def added_ttft_spread(runs: list[Run]) -> tuple[float, float]:
    added = [(run.ttft_s - run.model_ttft_s) * 1000 for run in runs]
    return min(added), max(added)


def measure(runs: int, max_tokens: int, client_in_process: bool = False) -> dict[str, Any]:
    # The same prompt every run: reuse off, so the kit reads it whole each time, as the raw run does.
    settings = LlamaSettings(max_tokens=max_tokens, temperature=0, seed=1, prefix_reuse=False)
    engine = engine_for(settings)
    engine.load()
    from llama_cpp import Llama

    raw_llama = Llama(
        model_path=str(engine.model_path), n_ctx=1024, n_threads=engine.n_threads, flash_attn=True, verbose=False
    )
    clock = ModelClock(raw_llama)
    chat_model = ChatLlama(max_tokens=max_tokens, temperature=0, seed=1, prefix_reuse=False)
    results: dict[str, list[Run]] = {"raw": [], "kit": [], "kit_chain": []}
    with (
        BackgroundServer(create_app(LlamaSource(settings))) as direct,
        BackgroundServer(create_app(chat_model)) as chain,
        httpx.Client(timeout=120) as client,
    ):
        remote = None if client_in_process else ClientProcess()
        read = remote.read if remote is not None else lambda url: read_stream(url, client)
        paths: dict[str, Callable[[], Run]] = {
            "raw": lambda: raw_run(raw_llama, settings, clock),
            "kit": lambda: kit_run(direct.url + "chat-stream", read, clock),
            "kit_chain": lambda: kit_run(chain.url + "chat-stream", read, clock),
        }
        for path in paths.values():  # warm-up: caches, the first HTTP connection
            path()
        for index in range(runs):
            order = list(paths) if index % 2 == 0 else list(reversed(paths))  # no path always goes first
            for name in order:
                results[name].append(paths[name]())
        if remote is not None:
            remote.close()
    chars = {run.chars for runs_ in results.values() for run in runs_}
    if len(chars) != 1:
        raise SystemExit(f"the paths produced different replies (lengths {sorted(chars)}): not a fair comparison")
    summaries = {name: summarise(runs_, max_tokens) for name, runs_ in results.items()}
    raw = summaries["raw"]
    # Runs of one round are neighbours in time, so each kit run's throughput is compared with its own raw
    # run: the machine's drift (other processes on 2 shared cores) cancels out of the paired ratio. The
    # added TTFT is the client's TTFT minus the model's own, timed inside the same run (ModelClock).
    figures: dict[str, Any] = {
        "client": "in the server's process" if client_in_process else "a process of its own",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "runs": runs,
        "paths": {name: asdict(summary) for name, summary in summaries.items()},
        "ratio": paired(results["kit"], results["raw"], lambda kit, raw: raw.total_s / kit.total_s),
        # The share of the client's wait that is the model's own work, within each run (1.0: no overhead).
        "pipeline_ratio": statistics.median(run.model_total_s / run.total_s for run in results["kit"]),
        # The model's own speed inside kit runs vs raw runs: below 1.0 the kit's threads slowed the model.
        "model_speed_ratio": paired(
            results["kit"], results["raw"], lambda kit, raw: raw.model_total_s / kit.model_total_s
        ),
        "added_ttft_ms": added_ttft_ms(results["kit"]),
        "added_ttft_ms_spread": added_ttft_spread(results["kit"]),
        "naive_added_ttft_ms": summaries["kit"].ttft_ms - raw.ttft_ms,
        "chain_ratio": paired(results["kit_chain"], results["raw"], lambda kit, raw: raw.total_s / kit.total_s),
        "chain_added_ttft_ms": added_ttft_ms(results["kit_chain"]),
    }
    figures["table"] = {
        # Over the whole reply, prompt included, through llama-cpp-python's high-level API: not the decode-only
        # limit of the bare low-level loop that bench_users reports (a different, higher figure by design).
        "llama-cpp-python create_chat_completion alone, tokens/s over the whole reply": f"{raw.tokens_per_s:.1f}",
        "tokens/s through the kit (ratio, target >= 0.97)": (
            f"{summaries['kit'].tokens_per_s:.1f} ({figures['ratio']:.3f})"
        ),
        "TTFT the kit adds (target < 5 ms)": f"{figures['added_ttft_ms']:.1f} ms (raw TTFT {raw.ttft_ms:.0f} ms)",
        "via ChatLlama/LangChain: ratio, added TTFT": (
            f"{figures['chain_ratio']:.3f}, {figures['chain_added_ttft_ms']:.1f} ms"
        ),
    }
    return figures


def markdown(figures: dict[str, Any]) -> str:
    names = {
        "raw": "llama-cpp-python alone",
        "kit": "kit: LlamaSource over SSE (loopback)",
        "kit_chain": "kit: ChatLlama (LangChain) over SSE",
    }
    raw_rate = figures["paths"]["raw"]["tokens_per_s"]
    lines = [
        f"Model benchmark: {figures['max_tokens']} tokens, temperature 0, seed 1, median of {figures['runs']} runs; "
        f"client in {figures['client']}",
        "",
        "| path | TTFT ms | tokens/s | decode tokens/s | ratio of medians |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, name in names.items():
        path = figures["paths"][key]
        lines.append(
            f"| {name} | {path['ttft_ms']:.1f} | {path['tokens_per_s']:.1f} | {path['decode_tokens_per_s']:.1f} "
            f"| {path['tokens_per_s'] / raw_rate:.3f} |"
        )
    ok_ratio = "met" if figures["ratio"] >= TARGET_RATIO else "MISSED"
    ok_ttft = "met" if figures["added_ttft_ms"] < TARGET_ADDED_TTFT_MS else "MISSED"
    low, high = figures["added_ttft_ms_spread"]
    lines += [
        "",
        f"- throughput ratio kit/raw (median of paired runs): {figures['ratio']:.3f} "
        f"(target >= {TARGET_RATIO}: {ok_ratio})",
        f"- TTFT the kit adds (client TTFT minus the model's own, per run; median): "
        f"{figures['added_ttft_ms']:.2f} ms, range {low:.2f}-{high:.2f} (target < {TARGET_ADDED_TTFT_MS:.0f} ms: "
        f"{ok_ttft})",
        f"- within kit runs: the model's own time is {figures['pipeline_ratio']:.3f} of the client's wait; "
        f"the model ran at {figures['model_speed_ratio']:.3f} of its raw speed (paired)",
        f"- through ChatLlama (LangChain): ratio {figures['chain_ratio']:.3f}, "
        f"TTFT added {figures['chain_added_ttft_ms']:.2f} ms",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="measured runs per path (default: 7)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per reply (default: 128)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    parser.add_argument(
        "--client-in-process", action="store_true", help="read streams in the server's process (default: its own)"
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the client process's mode
    args = parser.parse_args()
    if args.client:
        client_loop()
        return
    logging.basicConfig(level=logging.WARNING)
    figures = measure(args.runs, args.max_tokens, args.client_in_process)
    print(markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
