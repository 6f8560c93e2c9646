"""The kit beside llama.cpp's own server, in the same run: 1 and 8 users over HTTP, and a 20-turn chat.

The peer is `llama-server`, built by scripts/ensure-llama-server.sh from the llama.cpp sources that the pinned
llama-cpp-python sdist carries, with the same flags (cached; the first build takes minutes), run with `-np 8
--cont-batching -fa on`, the same model and threads. The kit runs in process (`kit serve`-style). Both cache
prompts as they ship (llama-server's `cache_prompt`, the kit's prefix reuse), with 1,024 tokens per slot. Rounds
alternate between the two; tokens are counted with the model's tokenizer on the text each user received.

The 20-turn chat sends each turn with the whole history before it, as a chat page does: time to first text per
turn, llama-server's `cache_prompt` against the kit's prefix reuse.

    python -m bench.bench_peer [--runs 3] [--tokens 96] [--turns 20] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.bench_engine_process import Texts, TimedTexts, in_process, kit_texts, timed_reply, users_round
from bench.measure import ROOT, report, stop_child
from bench.socket_read import post_streaming
from kit.serving.ports import free_port, wait_until_answering

LLAMA_CPP_VERSION = "0.3.36"
AGGREGATE_TARGET = 1.0  # the kit's 8-user tokens/s as a share of llama-server's
CHAT_QUESTIONS = [
    "Name a fruit.",
    "Why do people like it?",
    "Name another one.",
    "Which of the two is sweeter?",
    "Tell me about a vegetable.",
]


def peer_binary() -> str:
    """The cached llama-server for this CPU and flags (built on the first call)."""
    script = ROOT / "scripts" / "ensure-llama-server.sh"
    done = subprocess.run([str(script), sys.executable, LLAMA_CPP_VERSION], check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


@contextmanager
def llama_server(binary: str, threads: int, context: int) -> Iterator[str]:
    """llama-server on the embedded model, 8 slots of `context` tokens each; yields its URL."""
    from kit.model.settings import default_model_path

    port = free_port()
    command = [binary, "-m", str(default_model_path()), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-np", "8", "-c", str(8 * context), "--cont-batching", "-fa", "on", "-t", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_answering(url + "health", 300, ok_only=True)
        peer_texts_for(8)(url, "Hi", [])  # warm
        yield url
    finally:
        stop_child(process)


def peer_texts_for(tokens: int, cache_prompt: bool = True) -> Texts:
    """llama-server's streamed chat completion (greedy, `tokens` at most) as text pieces."""

    def texts(url: str, prompt: str, history: list[dict[str, str]]) -> TimedTexts:
        messages = [{"role": "assistant" if m["role"] == "ai" else m["role"], "content": m["text"]} for m in history]
        body = {"messages": [*messages, {"role": "user", "content": prompt}], "stream": True}
        body |= {"max_tokens": tokens, "temperature": 0, "cache_prompt": cache_prompt}
        read = post_streaming(url + "v1/chat/completions", body)
        if read.status() != 200:
            raise RuntimeError(f"llama-server answered {read.status()}")
        pieces = []
        for at, value in read.data():
            if value.strip() == "[DONE]":
                continue
            for choice in json.loads(value).get("choices", []):
                if choice.get("delta", {}).get("content"):
                    pieces.append((at, str(choice["delta"]["content"])))
        return TimedTexts(read.asked, read.ended, pieces)

    return texts


def chat(texts: Texts, url: str, turns: int) -> list[float]:
    """One conversation of `turns` turns, each with the history before it: time to first text per turn."""
    history: list[dict[str, str]] = []
    firsts = []
    for turn in range(turns):
        question = CHAT_QUESTIONS[turn % len(CHAT_QUESTIONS)]
        answer, times = timed_reply(texts, url, question, history)
        firsts.append(times["ttft_s"])
        history += [{"role": "user", "text": question}, {"role": "ai", "text": answer}]
    return firsts


def run(runs: int, tokens: int, turns: int, threads: int) -> dict[str, Any]:
    """Rounds alternating between llama-server and the kit: 1 and 8 users, then one long chat each."""
    from llama_cpp import Llama

    from kit.model.settings import default_model_path

    binary = peer_binary()
    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)

    def tokenize(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False))

    peer = peer_texts_for(tokens)
    setups: dict[str, tuple[Callable[[], Any], Texts]] = {
        "llama-server": (lambda: llama_server(binary, threads, 1024), peer),
        # Both as shipped, prompt caching on: llama-server's cache_prompt reads only what a slot's last prompt
        # does not share (24 of these prompts' 46 tokens: the system prompt and "Write a long story about a
        # dragon number"), so the kit's prefix reuse does the same; the same 1,024 tokens per slot.
        "kit (in process)": (lambda: _kit(threads, tokens, reuse=True, n_ctx=1024), kit_texts),
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    for _ in range(runs):
        for name, (start, texts) in setups.items():
            with start() as url:
                rounds[name].append({str(n): users_round(url, n, tokenize, texts) for n in (1, 8)})
    chats = {
        "llama-server (cache_prompt)": _chat_on(lambda: llama_server(binary, threads, 4096), peer, turns),
        "kit (prefix reuse)": _chat_on(lambda: _kit(threads, tokens, reuse=True), kit_texts, turns),
    }
    return {"runs": runs, "tokens": tokens, "threads": threads, "turns": turns, "rounds": rounds, "chats": chats}


@contextmanager
def _kit(threads: int, tokens: int, reuse: bool, n_ctx: int = 0) -> Iterator[str]:
    with in_process(threads, tokens, reuse, n_ctx) as (url, _):
        yield url


def _chat_on(start: Callable[[], Any], texts: Texts, turns: int) -> list[float]:
    with start() as url:
        return chat(texts, url, turns)


def describe(results: dict[str, Any]) -> str:
    """Markdown: the kit's rates as ratios to llama-server's in the same rounds, and the long chat per turn."""
    rows = {}
    for name, rounds in results["rounds"].items():
        rows[name] = {n: statistics.median(r[n]["tokens_per_s"] for r in rounds) for n in ("1", "8")}
        rows[name]["ttft"] = statistics.median(r["8"]["ttft_max_s"] for r in rounds)
        rows[name]["spread"] = (
            min(r["8"]["tokens_per_s"] for r in rounds),
            max(r["8"]["tokens_per_s"] for r in rounds),
        )
    peer = rows["llama-server"]
    lines = [
        f"### The peer: llama.cpp's own server\n\nllama-server built from llama-cpp-python {LLAMA_CPP_VERSION}'s "
        f"llama.cpp with the kit's flags, `-np 8 --cont-batching -fa on -t {results['threads']}`, against the kit in "
        f"process, both caching prompts (`cache_prompt`, prefix reuse); {results['tokens']}-token greedy replies, "
        f"medians of {results['runs']} alternating rounds.",
        "",
        "| server | 1 user tokens/s | 8 users tokens/s (min-max) | 8 ÷ 1 | 8 users ÷ llama-server's | "
        "8 users first text max s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        low, high = row["spread"]
        lines.append(
            f"| {name} | {row['1']:.1f} | {row['8']:.1f} ({low:.1f}-{high:.1f}) | {row['8'] / row['1']:.2f}x | "
            f"{row['8'] / peer['8']:.2f} | {row['ttft']:.2f} |"
        )
    lines.append(f"\nTarget: the kit's 8-user tokens/s >= {AGGREGATE_TARGET} of llama-server's in the same run.")
    turns = results["turns"]
    lines += ["", f"A {turns}-turn chat, time to first text (s) per turn:", ""]
    shown = sorted({0, 1, 4, 9, turns // 2, turns - 1} & set(range(turns)))
    lines.append("| server | " + " | ".join(f"turn {t + 1}" for t in shown) + " | median |")
    lines.append("|---|" + "---|" * (len(shown) + 1))
    for name, firsts in results["chats"].items():
        cells = " | ".join(f"{firsts[t]:.3f}" for t in shown)
        lines.append(f"| {name} | {cells} | {statistics.median(firsts):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    report(run(args.runs, args.tokens, args.turns, args.threads), describe, args.json)


if __name__ == "__main__":
    main()
