"""One model for every web worker: 8 users at once through HTTP against 1, in process and with the engine process
behind 4 gunicorn workers, against the bare batched llama.cpp loop and llama.cpp's own server (bench_peer's, every
prompt read whole as the kit does here) in the same run; memory of one engine
process against workers each holding a model; Stop to a free engine slot through a source, a chain, a graph.

Every figure comes from the same run: the four set-ups are up at once (the bare loop in a process of its own, as
bench_users does: two llama.cpp contexts in one process spin against each other) and take turns, 1 user on each,
then 8 on each, `--runs` x `--replies` times, so that the ratios compare figures taken seconds apart. Tokens are
counted with the model's tokenizer on the text each user received (greedy replies of `--tokens` tokens).

    python -m bench.bench_engine_process [--runs 3] [--replies 3] [--tokens 96] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_users import PROMPTS
from bench.measure import ROOT, alternating_rounds, report, shared_client, stop_child, summary
from bench.socket_read import post_streaming
from kit.serving.client import chat_body, iter_stream
from kit.serving.ports import free_port, wait_until_answering

GAIN_TARGET = 0.9  # the kit's 8-user gain over one user, as a share of the bare loop's gain
ONE_USER_TARGET = 0.95  # one user's tokens/s through HTTP, as a share of the bare loop serving the same prompt
STOP_TARGET_S = 0.5
# Runs to max_tokens (measured: 500 greedy tokens without an end); "Count from 1 to 1000." ends by itself after 51 to
# 121 tokens, so a slow Stop could have timed a reply that had already ended.
LONG = "Count from 1 to 1000, separated by commas."


def app(threads: int = 0, tokens: int = 96, reuse: bool = False, n_ctx: int = 0) -> Any:
    """The app every set-up serves: the embedded model's source (remote when KIT_ENGINE_URL is set); with `reuse`,
    prefix reuse on and (unless `n_ctx` says otherwise) the full context per slot, for long chats."""
    from kit import LlamaSettings, LlamaSource, create_app

    settings = LlamaSettings(max_tokens=tokens, temperature=0, seed=1, repeat_penalty=1.0, prefix_reuse=reuse)
    n_ctx = n_ctx or (4096 if reuse else 1024)
    return create_app(LlamaSource(settings, n_ctx=n_ctx, n_threads=threads or None))


@contextmanager
def in_process(threads: int, tokens: int, reuse: bool = False, n_ctx: int = 0) -> Iterator[tuple[str, list[int]]]:
    """`kit serve`-style: one werkzeug process holding the model; yields its URL and pid."""
    port = free_port()
    code = (
        "import sys; from bench.bench_engine_process import app; from kit.serving.server import bind, serve_forever; "
        f"a = app({threads}, {tokens}, {reuse}, {n_ctx}); serve_forever(bind(a, '127.0.0.1', {port}))"
    )
    with _child([sys.executable, "-c", code], f"http://127.0.0.1:{port}/") as process:
        yield f"http://127.0.0.1:{port}/", [process.pid]


@contextmanager
def behind_gunicorn(threads: int, tokens: int, workers: int = 4) -> Iterator[tuple[str, list[int]]]:
    """`kit serve --prod --engine`: 4 gunicorn workers and one engine process; yields the URL and every pid."""
    port = free_port()
    command = [sys.executable, "-m", "kit", "serve", "--prod", "--port", str(port), "--workers", str(workers)]
    command += ["--app", f"bench.bench_engine_process:app(0, {tokens})", "--engine", "--n-ctx", "1024"]
    command += ["--engine-threads", str(threads)]
    with _child(command, f"http://127.0.0.1:{port}/", start_new_session=True) as process:
        yield f"http://127.0.0.1:{port}/", _family(process.pid)[:1]


@contextmanager
def _child(command: list[str], url: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    env = {key: value for key, value in os.environ.items() if key != "KIT_ENGINE_URL"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL, **popen)
    try:
        wait_until_answering(url + "healthz", 300, ok_only=True)
        warm(url)
        yield process
    finally:
        stop_child(process)


def _family(pid: int) -> list[int]:
    """A process and all its descendants (the launcher, the engine, gunicorn's master and workers)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):  # every thread's children: the launcher starts the engine from one
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += map(int, (task / "children").read_text().split())
    return found


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together, in MB."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            total_kb += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return total_kb / 1024


def engine_pid(pids: list[int]) -> int:
    """The engine process among a launcher's family."""
    return next(pid for pid in pids if b"kit\x00engine" in Path(f"/proc/{pid}/cmdline").read_bytes())


def warm(url: str) -> None:
    """One short reply per worker's first use of the model (loading is not what is measured)."""
    for _ in range(4):
        kit_texts(url, "Hi", [])


@dataclass(frozen=True)
class TimedTexts:
    """A streamed reply as it came: when it was asked for, when it ended, and each text with its arrival time."""

    asked: float
    ended: float
    texts: list[tuple[float, str]]


Texts = Callable[[str, str, list[dict[str, str]]], TimedTexts]
"""A server's streamed reply: (server URL, the new message, the history before it) -> its timed texts."""


def kit_texts(url: str, prompt: str, history: list[dict[str, str]]) -> TimedTexts:
    """The kit's reply through its Deep Chat route, read off the socket (bench.socket_read)."""
    read = post_streaming(url + "chat-stream", chat_body(prompt, history))
    if read.status() != 200:
        raise RuntimeError(f"the kit answered {read.status()}")
    texts = []
    for at, value in read.data():
        payload = json.loads(value)
        if "error" in payload:
            raise RuntimeError(f"the kit's stream failed: {payload['error']}")
        if payload.get("text"):
            texts.append((at, str(payload["text"])))
    return TimedTexts(read.asked, read.ended, texts)


def timed_reply(texts: Texts, url: str, prompt: str, history: list[dict[str, str]]) -> tuple[str, dict[str, float]]:
    """The reply's text, its first text (from asking), its end and its first to last text."""
    reply = texts(url, prompt, history)
    if not reply.texts:
        raise RuntimeError(f"{url} sent no text")
    first, last = reply.texts[0][0], reply.texts[-1][0]
    text = "".join(piece for _, piece in reply.texts)
    # First to last text: the bare loop times decoding only, without reading the prompt.
    return text, {"ttft_s": first - reply.asked, "total_s": reply.ended - reply.asked, "decode_s": last - first}


def one_user(
    url: str, prompt: str, tokenize: Callable[[str], int], results: list[dict[str, float]], texts: Texts
) -> None:
    text, times = timed_reply(texts, url, prompt, [])
    results.append({**times, "tokens": tokenize(text)})


def users_round(url: str, users: int, tokenize: Callable[[str], int], texts: Texts = kit_texts) -> dict[str, float]:
    """`users` ask at once: aggregate tokens/s (all tokens over the last one's end), each user's decode rate
    (median), and first text max."""
    results: list[dict[str, float]] = []
    arguments = [(url, PROMPTS[i], tokenize, results, texts) for i in range(users)]
    threads = [threading.Thread(target=one_user, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = max(r["total_s"] for r in results)
    return {
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "decode_tokens_per_s": statistics.median((r["tokens"] - 1) / r["decode_s"] for r in results),
        "ttft_max_s": max(r["ttft_s"] for r in results),
    }


@contextmanager
def bare_loop(threads: int, tokens: int) -> Iterator[Callable[[int], dict[str, float]]]:
    """bench_batching's bare greedy loop in a process of its own (two llama.cpp contexts in one process spin against
    each other), kept loaded: yields a function of N users giving its figures for serving their prompts from asking
    to the last token ("tokens_per_s", and for 8 "ttft_max_s": when the prompts were read) and, for one, decoding
    alone ("decode_tokens_per_s")."""
    command = [
        sys.executable,
        "-m",
        "bench.bench_batching",
        "--serve",
        "--threads",
        str(threads),
        "--tokens",
        str(tokens),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout

    def measure(users: int) -> dict[str, float]:
        stdin.write(f"{users}\n")
        stdin.flush()
        figures = json.loads(stdout.readline())
        served = {"tokens_per_s": figures["served_tokens_per_s"], "ttft_max_s": figures["served_first_s"]}
        return served | ({"decode_tokens_per_s": figures["tokens_per_s"]} if "tokens_per_s" in figures else {})

    try:
        for users in (1, 8):  # its contexts made and warm, as the servers' warm replies
            measure(users)
        yield measure
    finally:
        stdin.close()
        process.wait(30)


def stop_to_free_slot(engine_root: str, runs: int) -> dict[str, dict[str, float]]:
    """Seconds from Stop (the kit's stop route) to the engine's slot being free, for each kind of source."""
    from kit import ChatLlama, LlamaSource, create_app, demo_chain, openai_chat_model
    from kit.serving.server import BackgroundServer

    url, long = engine_root + "/v1", {"max_tokens": 400, "temperature": 0}
    sources = {
        "plain source": lambda: LlamaSource(engine_url=url, **long),
        "LCEL chain": lambda: demo_chain(ChatLlama(engine_url=url, **long)),
        "LCEL chain (ChatOpenAI)": lambda: demo_chain(openai_chat_model(url, **long)),
        "LangGraph graph (ChatOpenAI)": lambda: one_node_graph(openai_chat_model(url, **long)),
    }
    figures = {}
    for name, build in sources.items():
        with BackgroundServer(create_app(build(), coalesce_ms=0)) as server:
            figures[name] = summary([_stop_once(server.url, engine_root) for _ in range(runs)])
    return figures


def one_node_graph(model: Any) -> Any:
    """LangGraph's quickstart graph: MessagesState and one chat-model node."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile()


def _stop_once(url: str, engine_root: str) -> float:
    def running() -> int:
        return int(client.get(engine_root + "/health", timeout=10).json()["running"])

    client, stream_id = shared_client(), secrets.token_hex(16)
    items = iter_stream(url + "chat-stream", chat_body(LONG), headers={"X-Kit-Stream-Id": stream_id}, client=client)
    texts = 0
    for item in items:
        texts += bool(getattr(item, "payload", None) and item.payload.get("text"))  # type: ignore[union-attr]
        if texts >= 3:
            break
    asked = time.perf_counter()
    client.post(url + "chat-stream/stop", content=stream_id, timeout=10)
    while running():
        time.sleep(0.002)
    freed = time.perf_counter() - asked
    items.close()
    return freed


def run(runs: int, tokens: int, threads: int, replies: int = 3) -> dict[str, Any]:
    """The bare loop, the kit in process, the kit behind 4 workers and llama-server all up at once, taking turns:
    `runs` x `replies` rounds of 1 user (three times), then 8, on each (bench.measure.alternating_rounds); then
    memory, and Stop."""
    from llama_cpp import Llama

    from kit.model.settings import default_model_path

    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)

    def tokenize(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False))

    def over_http(url: str) -> Callable[[int], dict[str, float]]:
        return lambda users: users_round(url, users, tokenize)

    from bench.bench_peer import llama_server, peer_binary, peer_texts_for  # it imports this module

    with contextlib.ExitStack() as stack:
        bare = stack.enter_context(bare_loop(threads, tokens))
        in_process_url, in_process_pids = stack.enter_context(in_process(threads, tokens))
        workers_url, workers_pids = stack.enter_context(behind_gunicorn(threads, tokens))
        peer_url = stack.enter_context(llama_server(peer_binary(), threads, 1024))
        peer = peer_texts_for(tokens, cache_prompt=False)  # as the kit here: every prompt read whole
        measures = {"bare loop": bare, "in process": over_http(in_process_url)}
        measures["engine process, 4 workers"] = over_http(workers_url)
        measures["llama-server (the peer)"] = lambda users: users_round(peer_url, users, tokenize, peer)
        # One user's replies are short and their rate the noisiest figure: three a round, in turns.
        rounds = alternating_rounds(measures, (1, 1, 1, 8), runs * replies)
        family = _family(workers_pids[0])
        engine = engine_pid(family)
        memory = {"in process": rss_mb(_family(in_process_pids[0])), "engine process, 4 workers": rss_mb(family)}
        memory["engine process alone"] = rss_mb([engine])
        stops = stop_to_free_slot(_engine_root(engine), runs)
    return {
        "runs": runs, "replies": replies, "tokens": tokens, "threads": threads,
        "rounds": rounds, "memory_mb": memory, "stop": stops,
    }  # fmt: skip


def _engine_root(pid: int) -> str:
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    return f"http://127.0.0.1:{int(arguments[arguments.index(b'--port') + 1])}"


def figures(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per set-up: medians of 1 and 8 users' tokens/s (from asking to the last text), the gain, its share of the
    bare loop's serving the same prompts, one user's share of it, one user's decoding rate's share of the bare
    loop's, and first text max."""
    rows: dict[str, dict[str, float]] = {}
    for name, rounds in results["rounds"].items():
        one = statistics.median(r["1"]["tokens_per_s"] for r in rounds)
        eight = statistics.median(r["8"]["tokens_per_s"] for r in rounds)
        rows[name] = {"one": one, "eight": eight, "gain": eight / one}
        rows[name]["ttft_max_s"] = max(r["8"]["ttft_max_s"] for r in rounds)
        rows[name]["one_decode"] = statistics.median(r["1"]["decode_tokens_per_s"] for r in rounds)
    bare = rows["bare loop"]
    for row in rows.values():
        row["gain_share"] = row["gain"] / bare["gain"]
        row["one_share"] = row["one"] / bare["one"]
        row["one_decode_share"] = row["one_decode"] / bare["one_decode"]
    return rows


def paired(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per kit set-up, each round's ratios to the bare loop's figures of the same round (taken seconds apart),
    as (median, min, max) over the rounds: one user's tokens/s, the gain over one user, 8 users' tokens/s."""
    bare = results["rounds"]["bare loop"]
    ratios: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, rounds in results["rounds"].items():
        if name == "bare loop":
            continue
        pairs = list(zip(rounds, bare, strict=True))
        one = [kit["1"]["tokens_per_s"] / limit["1"]["tokens_per_s"] for kit, limit in pairs]
        eight = [kit["8"]["tokens_per_s"] / limit["8"]["tokens_per_s"] for kit, limit in pairs]
        gain = [e / o for e, o in zip(eight, one, strict=True)]
        ratios[name] = {key: _spread(values) for key, values in (("one", one), ("gain", gain), ("eight", eight))}
    return ratios


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def describe(results: dict[str, Any]) -> str:
    """A markdown table of the figures, each a ratio to the bare loop measured in the same run."""
    rows = figures(results)
    lines = [
        f"One model for every worker ({results['threads']} llama.cpp threads, {results['tokens']}-token greedy "
        f"replies, medians of {len(next(iter(results['rounds'].values())))} rounds, the set-ups up at once and "
        "taking turns reply by reply, one user's figure in a round the median of three replies; the machine was "
        "shared with other work, so compare the ratios, measured seconds apart, rather than the absolute rates).",
        "",
        "| set-up | 1 user tokens/s | 8 users tokens/s | gain | gain ÷ bare loop's | 1 user ÷ bare loop | "
        "1 user decoding ÷ bare loop's | 8 users first text max s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['one']:.1f} | {row['eight']:.1f} | {row['gain']:.2f}x | {row['gain_share']:.2f} | "
            f"{row['one_share']:.2f} | {row['one_decode_share']:.2f} | {row['ttft_max_s']:.2f} |"
        )
    lines.append(
        "\nTokens/s: each user's tokens over the time from asking to the end, all users' over the last one's end; "
        "the bare loop does the same work: it reads the same chat-templated prompts (8 in full batches) and decodes "
        "the same number of tokens (its first text max: when its 8 prompts were read). Decoding: first to last text. "
        f"Targets: gain ÷ bare loop's >= {GAIN_TARGET} in process and behind 4 workers, 1 user ÷ bare loop >= "
        f"{ONE_USER_TARGET}."
    )
    lines += [
        "\nThe same ratios paired by round (each round's kit figure over the bare loop's of that round, seconds "
        "apart: the machine's drift between rounds cancels out), median (min-max) over the rounds:",
        "",
        "| set-up | 1 user ÷ bare loop | gain ÷ bare loop's | 8 users ÷ bare loop's |",
        "|---|---|---|---|",
    ]
    for name, ratios in paired(results).items():
        cells = " | ".join(f"{m:.2f} ({low:.2f}-{high:.2f})" for m, low, high in ratios.values())
        lines.append(f"| {name} | {cells} |")
    memory = results["memory_mb"]
    if memory:
        lines.append(
            f"Memory: 4 workers and one engine process {memory['engine process, 4 workers']:.0f} MB in all (the engine "
            f"{memory['engine process alone']:.0f} MB), against {4 * memory['in process']:.0f} MB for 4 processes each "
            f"holding the model ({memory['in process']:.0f} MB each, the in-process server measured)."
        )
    for name, stop in results["stop"].items():
        lines.append(
            f"Stop to a free engine slot, {name}: {stop['median']:.3f} s median ({stop['min']:.3f}-{stop['max']:.3f}, "
            f"{stop['n']} runs; target <= {STOP_TARGET_S} s)."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replies", type=int, default=3, help="rounds per run (runs also count Stop's repeats)")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    report(run(args.runs, args.tokens, args.threads, args.replies), describe, args.json)


if __name__ == "__main__":
    main()
