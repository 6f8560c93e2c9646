"""Long conversations on the embedded model: time to first text per turn with prefix reuse, without it, and the limit.

Three loads, each sent as Deep Chat sends it (the whole visible history with every message) through
`LlamaSource` on the engine's default settings:
- one user, a 30-turn chat with replies of up to `--reply-tokens` tokens: time to first text per turn, with
  reuse (medians over `--runs` fresh conversations) and without it (on the last run's histories, every few
  turns); the limit is a bare llama.cpp loop (low-level API, one sequence, the same threads) reading only each
  turn's new tokens with the history already in its cache, in this process after the engine is closed;
- 8 users chatting at once, 10 turns each (shorter replies): time to first text at turn 10, p50 and max;
- 32 conversations taking turns on 8 slots: the share of follow-up turns that reused at least half their
  prompt (from a slot or from host memory) and their time to first text.

    python -m bench.bench_conversations [--runs 3] [--reply-tokens 200] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.measure import report
from kit import CancelToken
from kit.model.engine import Engine
from kit.model.prefix_cache import common_prefix
from kit.model.settings import LlamaSettings
from kit.model.source import LlamaSource

TOPICS = [
    "the sea", "volcanoes", "bread", "the moon", "trains", "bees", "chess", "the Roman empire", "rain", "glaciers",
    "coffee", "owls", "bicycles", "the printing press", "tea", "deserts", "whales", "lighthouses", "paper",
    "castles", "comets", "forests", "bridges", "salt", "clocks", "rivers", "honey", "maps", "kites", "snow",
]  # fmt: skip
TTFT_P50_TARGET_S, TTFT_MAX_TARGET_S, REUSE_TARGET = 0.5, 1.5, 0.9
WITHOUT_REUSE_TURNS = (1, 3, 5, 10, 20, 30)
Message = dict[str, str]


def ask(source: LlamaSource, history: list[Message], leave_after_first: bool = False) -> tuple[float, str]:
    """Time to first text and the reply for one turn (the whole history sent, as Deep Chat does)."""
    asked, first, reply = time.perf_counter(), float("nan"), []
    chunks = source(history, CancelToken())
    for chunk in chunks:
        text = chunk["choices"][0]["delta"].get("content")
        if text:
            first = time.perf_counter() - asked if not reply else first
            reply.append(text)
            if leave_after_first:
                chunks.close()  # type: ignore[attr-defined]
                break
    return first, "".join(reply)


def question(run: int, turn: int) -> str:
    return f"Tell me about {TOPICS[(turn + 7 * run) % len(TOPICS)]}, in detail."


def one_user(source: LlamaSource, run: int, turns: int) -> tuple[list[dict[str, float]], list[list[Message]]]:
    """A chat of `turns` turns; per turn its time to first text, tokens read and reused; and the histories."""
    engine, history, rows, histories = source.engine, [], [], []
    for turn in range(turns):
        history.append({"role": "user", "text": question(run, turn)})
        before = engine.reuse.fed_tokens, engine.reuse.reused_tokens, engine.reuse.shifted
        ttft, reply = ask(source, history)
        histories.append(list(history))
        history.append({"role": "ai", "text": reply})
        after = engine.reuse
        rows.append(
            {
                "ttft_s": ttft,
                "read": after.fed_tokens - before[0],
                "reused": after.reused_tokens - before[1],
                "shifted": after.shifted - before[2],
                "reply_chars": len(reply),
            }
        )
    return rows, histories


def without_reuse(settings: LlamaSettings, histories: list[list[Message]]) -> dict[str, float]:
    """Time to first text reading the whole (fitted) history, for a few turns of a finished chat."""
    source = LlamaSource(settings, prefix_reuse=False)
    return {
        str(t): ask(source, histories[t - 1], leave_after_first=True)[0]
        for t in WITHOUT_REUSE_TURNS
        if t <= len(histories)
    }


def users_at_once(source: LlamaSource, users: int, turns: int) -> list[list[float]]:
    """`users` conversations at once, each sending its next turn when its reply ends; TTFT per user per turn."""
    barrier = threading.Barrier(users)

    def chat(user: int) -> list[float]:
        history: list[Message] = []
        ttfts = []
        barrier.wait()
        for turn in range(turns):
            history.append({"role": "user", "text": question(100 + user, turn)})
            ttft, reply = ask(source, history)
            history.append({"role": "ai", "text": reply})
            ttfts.append(ttft)
        return ttfts

    with ThreadPoolExecutor(users) as pool:
        return list(pool.map(chat, range(users)))


def many_conversations(source: LlamaSource, conversations: int, turns: int, slots: int) -> dict[str, Any]:
    """`conversations` chats taking turns (round robin), `slots` requests at a time: reuse share and TTFT."""
    engine = source.engine
    histories: list[list[Message]] = [[] for _ in range(conversations)]
    follow_ups: list[float] = []
    before = engine.reuse.from_slot + engine.reuse.from_host, engine.reuse.from_host

    def one(index: int, turn: int) -> None:
        history = histories[index]
        history.append({"role": "user", "text": question(200 + index, turn)})
        ttft, reply = ask(source, history)
        history.append({"role": "ai", "text": reply})
        if turn:
            follow_ups.append(ttft)

    with ThreadPoolExecutor(slots) as pool:
        for turn in range(turns):
            if turn == 1:  # count the follow-ups only (a first turn shares the system prompt with every other)
                before = engine.reuse.from_slot + engine.reuse.from_host, engine.reuse.from_host
            list(pool.map(lambda index, turn=turn: one(index, turn), range(conversations)))
    hits = engine.reuse.from_slot + engine.reuse.from_host - before[0]
    return {
        "follow_up_turns": len(follow_ups),
        "reused_share": hits / len(follow_ups),
        "from_host": engine.reuse.from_host - before[1],
        "ttft_p50_s": statistics.median(follow_ups),
        "ttft_max_s": max(follow_ups),
    }


def reuse_drift(settings: LlamaSettings, conversations: int = 8, turns: int = 3) -> dict[str, int]:
    """How many greedy replies change with prefix reuse: each turn answered with reuse and read whole without."""
    reuse, fresh = LlamaSource(settings), LlamaSource(settings, prefix_reuse=False)
    changed = total = 0
    for conversation in range(conversations):
        history: list[Message] = []
        for turn in range(turns):
            history.append({"role": "user", "text": question(300 + conversation, turn)})
            reply = ask(reuse, history)[1]
            changed += reply != ask(fresh, history)[1]
            total += 1
            history.append({"role": "ai", "text": reply})
    return {"replies": total, "changed": changed}


def limit(engine: Engine, histories: list[list[Message]], replies: list[str]) -> list[float]:
    """A bare llama.cpp loop reading only each turn's new tokens, the history already cached (seconds per turn).

    Runs after the engine is closed (one llama.cpp context per process at a time, see bench_users.run).
    """
    import llama_cpp

    prompts = [engine.prompt(_chat(history))[0] for history in histories]
    replies_tokens = [engine.tokenize(reply) for reply in replies]
    path, n_threads = engine.model_path, engine.n_threads
    engine.close()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 8192
    params.n_threads = params.n_threads_batch = n_threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(8192, 0, 1)
    cached: list[int] = []
    seconds = []

    def read(tokens: list[int]) -> None:
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, len(cached) + i, 1, False
            batch.seq_id[i][0] = 0
        batch.logits[len(tokens) - 1] = True
        assert llama_cpp.llama_decode(ctx, batch) == 0
        cached.extend(tokens)

    for turn, prompt in enumerate(prompts):
        if len(prompt) + 256 > 8192:
            seconds.append(float("nan"))
            continue
        known = common_prefix(cached, prompt)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, known, -1)
        del cached[known:]
        started = time.perf_counter()
        read(prompt[known:])
        llama_cpp.llama_get_logits_ith(ctx, -1)
        seconds.append(time.perf_counter() - started)
        if turn + 1 < len(prompts) and replies_tokens[turn]:
            read(replies_tokens[turn])  # the reply, as generation leaves it in the cache (untimed)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return seconds


def _chat(history: list[Message]) -> list[Message]:
    return [{"role": "user" if m["role"] == "user" else "assistant", "content": m["text"]} for m in history]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(runs: int, reply_tokens: int, short_tokens: int, turns: int = 30) -> dict[str, Any]:
    """Every figure, medians over `runs`; the limit once, at the end, on the last run's chat."""
    settings = LlamaSettings(max_tokens=reply_tokens, temperature=0, seed=1)
    source = LlamaSource(settings)
    engine = source.engine
    engine.load()
    chats = [one_user(source, run, turns) for run in range(runs)]
    rows = [[chat[0][t] for chat in chats] for t in range(turns)]
    per_run = [[row["ttft_s"] for row in chat[0]] for chat in chats]
    short = LlamaSource(settings, max_tokens=short_tokens)
    eight = [users_at_once(short, engine.slots, 10) for _ in range(runs)]
    crowd = [many_conversations(short, 32, 3, engine.slots) for _ in range(runs)]
    histories = chats[-1][1]
    replies = [histories[i + 1][len(histories[i])]["text"] for i in range(len(histories) - 1)] + [""]
    results: dict[str, Any] = {
        "runs": runs,
        "reply_tokens": reply_tokens,
        "short_reply_tokens": short_tokens,
        "n_ctx": engine.n_ctx,
        "threads": engine.n_threads,
        "one_user": {
            "ttft_s": [spread([row["ttft_s"] for row in turn]) for turn in rows],
            "read": [statistics.median(row["read"] for row in turn) for turn in rows],
            "shifted_turns": sum(row["shifted"] > 0 for row in chats[-1][0]),
            "p50_s": spread([statistics.median(ttfts) for ttfts in per_run]),
            "max_s": spread([max(ttfts) for ttfts in per_run]),
            "answered": sum(row["reply_chars"] > 0 for chat in chats for row in chat[0]),
            "turns": turns * runs,
        },
        "without_reuse_s": without_reuse(settings, histories),
        "eight_users": {
            "turn10_p50_s": spread([statistics.median(user[-1] for user in round_) for round_ in eight]),
            "turn10_max_s": spread([max(user[-1] for user in round_) for round_ in eight]),
            "all_turns_max_s": spread([max(max(user) for user in round_) for round_ in eight]),
        },
        "crowd": {key: spread([c[key] for c in crowd]) for key in crowd[0]},
        "greedy_drift": reuse_drift(LlamaSettings(max_tokens=short_tokens, temperature=0, seed=1)),
        "copy": {"tokens": engine.reuse.copied_tokens, "seconds": engine.reuse.copy_s},
        "state_bytes_per_token": _state_bytes_per_token(engine),
    }
    results["limit_s"] = limit(engine, histories, replies)
    results["read_rate_tokens_per_s"] = _read_rate(results)
    return results


def _state_bytes_per_token(engine: Engine) -> float:
    scheduler = engine._scheduler
    entries = scheduler.memory.host.entries if scheduler is not None else {}
    tokens = sum(len(key) for key in entries)
    return sum(len(state) for state in entries.values()) / tokens if tokens else float("nan")


def _read_rate(results: dict[str, Any]) -> float:
    """Prompt tokens per second the bare loop read on the turns it timed (the cost of re-reading a history)."""
    pairs = [(r, s) for r, s in zip(results["one_user"]["read"], results["limit_s"], strict=False) if s == s and r]
    return sum(r for r, _ in pairs) / sum(s for _, s in pairs) if pairs else float("nan")


def describe(results: dict[str, Any]) -> str:
    """The markdown section for docs/benchmarks.md, with the issue's targets checked."""
    one, eight, crowd = results["one_user"], results["eight_users"], results["crowd"]
    limits = [s for s in results["limit_s"] if s == s]

    def cell(figure: dict[str, float], digits: int = 2) -> str:
        return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"

    copy = results["copy"]
    copy_ms = 1000 * copy["seconds"] / copy["tokens"] * 1000 if copy["tokens"] else float("nan")
    rate = results["read_rate_tokens_per_s"]
    lines = [
        "## Long conversations",
        "",
        f"`python -m bench.bench_conversations` ({results['threads']} threads, n_ctx {results['n_ctx']} per slot, "
        f"medians of {results['runs']} runs, min-max in brackets; the whole history sent every turn, as Deep Chat "
        "does).",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| one user, 30 turns ({results['reply_tokens']}-token replies): turns answered | "
        f"{one['answered']} of {one['turns']} | all |",
        f"| one user: time to first text p50, s | {cell(one['p50_s'])} | <= {TTFT_P50_TARGET_S} |",
        f"| one user: time to first text max (turns with old turns dropped included), s | {cell(one['max_s'])} | "
        f"<= {TTFT_MAX_TARGET_S} |",
        f"| one user: turns where old turns were dropped (context shift) | {one['shifted_turns']} | |",
        f"| the limit: a bare llama.cpp loop reading only each turn's new tokens, p50 / max s | "
        f"{statistics.median(limits):.3f} / {max(limits):.3f} | |",
        f"| 8 users at once, 10 turns ({results['short_reply_tokens']}-token replies): time to first text at turn "
        f"10, p50 s | {cell(eight['turn10_p50_s'])} | |",
        f"| 8 users: time to first text at turn 10, max s | {cell(eight['turn10_max_s'])} | |",
        f"| 32 conversations on 8 slots: follow-up turns reusing a cached prefix | "
        f"{cell(crowd['reused_share'])} | >= {REUSE_TARGET} |",
        f"| 32 conversations: of them restored from host memory | {cell(crowd['from_host'], 0)} | |",
        f"| 32 conversations: follow-up time to first text p50 / max s | {cell(crowd['ttft_p50_s'])} / "
        f"{cell(crowd['ttft_max_s'])} | |",
        f"| a sequence's state in host memory, KB per token | {results['state_bytes_per_token'] / 1024:.1f} | |",
        f"| copying a state out or in, ms per 1,000 tokens | {copy_ms:.1f} | |",
        f"| reading a prompt (the bare loop), tokens/s: ms per 1,000 tokens | {rate:.0f}: {1e6 / rate:.0f} | |",
        "",
        f"Greedy replies changed by prefix reuse ({results['short_reply_tokens']} tokens, each turn of 8 "
        f"conversations answered with reuse and read whole without): {results['greedy_drift']['changed']} of "
        f"{results['greedy_drift']['replies']}.",
        "",
        "Without reuse (the whole history read every turn), time to first text: "
        + ", ".join(f"turn {t}: {s:.2f} s" for t, s in results["without_reuse_s"].items())
        + ".",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Time to first text per turn: with reuse (median, min-max band), without it, and the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ttft = results["one_user"]["ttft_s"]
    turns = list(range(1, len(ttft) + 1))
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot(turns, [t["median"] for t in ttft], marker="o", label="with prefix reuse (median)")
    axis.fill_between(turns, [t["min"] for t in ttft], [t["max"] for t in ttft], alpha=0.2)
    without = results["without_reuse_s"]
    axis.plot([int(t) for t in without], list(without.values()), marker="s", color="tab:red", label="without reuse")
    axis.plot(turns, results["limit_s"], ":", color="black", label="limit: reading only the new tokens")
    axis.set_yscale("log")
    axis.set_xlabel("turn")
    axis.set_ylabel("time to first text, s")
    axis.set_title(f"One user, whole history every turn ({results['reply_tokens']}-token replies)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reply-tokens", type=int, default=200)
    parser.add_argument("--short-reply-tokens", type=int, default=32, help="replies of the 8-user and 32-chat loads")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--plot", help="write the plot (png) to this file")
    args = parser.parse_args()
    results = run(args.runs, args.reply_tokens, args.short_reply_tokens, args.turns)
    report(results, describe, args.json, plot, args.plot)


if __name__ == "__main__":
    main()
