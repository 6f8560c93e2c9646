"""The limit: a bare llama.cpp greedy decode loop (low-level API, one context, N sequences in one batch).

No kit, no sampler chain beyond greedy, no text decoding: what the hardware gives for this model and thread
count. The kit's batched engine is measured against it (one user: kit tokens/s ÷ limit).

Two limits for N sequences: decoding alone (tokens/s from the first token to the last), and serving: N users'
chat-templated prompts read in full batches, then their replies decoded together, tokens/s over the whole time
from asking (what a server at the hardware's limit gives N users asking at once, the same work as the kit's).

    python -m bench.bench_batching [--sequences 1 4 8 16] [--threads 1 2] [--tokens 96] [--runs 3]
    python -m bench.bench_batching --serve [--threads 2] [--tokens 96]   # takes turns with a server being measured
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from kit.model.settings import default_model_path

PROMPT = "Write a long story about a dragon who learns to bake bread."
USER_PROMPTS = [f"Write a long story about a dragon number {i} who learns to bake bread." for i in range(16)]
PREFILL_BATCH = 512  # llama.cpp's default micro-batch: prompt tokens read in one decode
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # SmolLM2's template's default


def templated(prompt: str) -> str:
    """SmolLM2's chat template (with its default system prompt) around one user message, as the kit sends it."""
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def quiet_logs() -> None:
    """Silence llama.cpp's loading chatter, as `Llama(verbose=False)` does."""
    from llama_cpp._logger import set_verbose

    set_verbose(False)


class NativeModel:
    """The GGUF model loaded once through llama.cpp's C API (no `Llama` object)."""

    def __init__(self, path: str) -> None:
        import llama_cpp

        self.api = llama_cpp
        llama_cpp.llama_backend_init()
        quiet_logs()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buffer = (self.api.llama_token * (len(data) + 8))()
        count = self.api.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), True, True)
        return list(buffer[:count])

    def context(self, n_ctx: int, n_seq: int, threads: int) -> Any:
        params = self.api.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_ctx, 512, n_seq
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = self.api.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as the kit's engine
        return self.api.llama_init_from_model(self.model, params)


def decode_loop(native: NativeModel, ctx: Any, prompt: list[int], sequences: int, tokens: int) -> float:
    """Feed `prompt` to `sequences` sequences, then decode `tokens` greedy tokens each; tokens/s of decoding."""
    api = native.api
    api.llama_memory_clear(api.llama_get_memory(ctx), True)
    batch = api.llama_batch_init(max(len(prompt), sequences), 0, sequences)
    n_vocab = api.llama_vocab_n_tokens(native.vocab)
    try:
        last = []
        for seq in range(sequences):  # the prompt once per sequence, as separate users would send it
            _fill(api, batch, [(token, i, seq, i == len(prompt) - 1) for i, token in enumerate(prompt)])
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
            last.append(_argmax(api.llama_get_logits_ith(ctx, len(prompt) - 1), n_vocab))
        started = time.perf_counter()
        for step in range(tokens - 1):
            _fill(api, batch, [(last[seq], len(prompt) + step, seq, True) for seq in range(sequences)])
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            last = [_argmax(api.llama_get_logits_ith(ctx, seq), n_vocab) for seq in range(sequences)]
        return sequences * (tokens - 1) / (time.perf_counter() - started)
    finally:
        api.llama_batch_free(batch)


def _fill(api: Any, batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    """Put (token, position, sequence id, wants logits) entries into `batch`."""
    batch.n_tokens = len(entries)
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq


def _argmax(logits: Any, n_vocab: int) -> int:
    import numpy as np

    return int(np.argmax(np.ctypeslib.as_array(logits, shape=(n_vocab,))))


def served_loop(native: NativeModel, ctx: Any, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    """Read every prompt (one sequence each, in full batches), then decode `tokens` greedy tokens for each:
    tokens/s over the whole time from the start, and when the first tokens were there."""
    api = native.api
    api.llama_memory_clear(api.llama_get_memory(ctx), True)
    n_vocab = api.llama_vocab_n_tokens(native.vocab)
    batch = api.llama_batch_init(PREFILL_BATCH, 0, 1)
    entries = [(token, i, seq, i == len(p) - 1) for seq, p in enumerate(prompts) for i, token in enumerate(p)]
    try:
        started = time.perf_counter()
        last = []
        for start in range(0, len(entries), PREFILL_BATCH):
            part = entries[start : start + PREFILL_BATCH]
            _fill(api, batch, part)
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompts")
            last += [_argmax(api.llama_get_logits_ith(ctx, i), n_vocab) for i, entry in enumerate(part) if entry[3]]
        first_s = time.perf_counter() - started
        for step in range(tokens - 1):
            _fill(api, batch, [(last[seq], len(p) + step, seq, True) for seq, p in enumerate(prompts)])
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            last = [_argmax(api.llama_get_logits_ith(ctx, seq), n_vocab) for seq in range(len(prompts))]
        return {"tokens_per_s": len(prompts) * tokens / (time.perf_counter() - started), "first_s": first_s}
    finally:
        api.llama_batch_free(batch)


def prefill_seconds(prompts: list[list[int]], threads: int) -> float:
    """Seconds llama.cpp takes to read `prompts` (one sequence each) in full batches: no user asking with them
    at once can see a first token sooner."""
    native = NativeModel(str(default_model_path()))
    api = native.api
    ctx = native.context(n_ctx=len(prompts) * 1024, n_seq=len(prompts), threads=threads)
    batch = api.llama_batch_init(PREFILL_BATCH, 0, 1)
    entries = [(token, i, seq, i == len(p) - 1) for seq, p in enumerate(prompts) for i, token in enumerate(p)]
    try:
        started = time.perf_counter()
        for start in range(0, len(entries), PREFILL_BATCH):
            _fill(api, batch, entries[start : start + PREFILL_BATCH])
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompts")
        return time.perf_counter() - started
    finally:
        api.llama_batch_free(batch)
        api.llama_free(ctx)


def run(sequences: list[int], threads: list[int], tokens: int, runs: int) -> dict[str, Any]:
    """Aggregate tokens/s (median and spread over `runs`) for each thread count and sequence count."""
    native, prompt, chats = _prompts()
    results: dict[str, Any] = {}
    for n_threads in threads:
        for n_seq in sequences:
            ctx = _context(native, prompt, chats[:n_seq], tokens, n_threads)
            try:
                figures = [decode_loop(native, ctx, prompt, n_seq, tokens) for _ in range(runs)]
                served = [served_loop(native, ctx, chats[:n_seq], tokens) for _ in range(runs)]
            finally:
                native.api.llama_free(ctx)
            results[f"{n_threads}x{n_seq}"] = {
                "threads": n_threads,
                "sequences": n_seq,
                "tokens_per_s": statistics.median(figures),
                "spread": (min(figures), max(figures)),
                "served_tokens_per_s": statistics.median(s["tokens_per_s"] for s in served),
                "served_first_s": statistics.median(s["first_s"] for s in served),
            }
    return results


def _prompts() -> tuple[NativeModel, list[int], list[list[int]]]:
    """The model, decode_loop's prompt and the users' chat-templated prompts, as tokens."""
    native = NativeModel(str(default_model_path()))
    prompt = native.tokenize(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    return native, prompt, [native.tokenize(templated(text)) for text in USER_PROMPTS]


def _context(native: NativeModel, prompt: list[int], chats: list[list[int]], tokens: int, threads: int) -> Any:
    """A context just large enough for len(chats) sequences of the longest prompt and `tokens` more."""
    longest = max(len(prompt), *(len(chat) for chat in chats))
    return native.context(n_ctx=len(chats) * (longest + tokens + 8), n_seq=len(chats), threads=threads)


def serve(threads: int, tokens: int) -> None:
    """Answer each line of stdin, a number of users N, with one JSON line: serving N users' prompts
    ("served_tokens_per_s", "served_first_s") and, for one user, decoding alone ("tokens_per_s"). The model and
    contexts stay loaded between lines, so a benchmark can take turns between this limit and the servers it
    measures, seconds apart."""
    native, prompt, chats = _prompts()
    contexts: dict[int, Any] = {}
    for line in sys.stdin:
        users = int(line)
        if users not in contexts:
            contexts[users] = _context(native, prompt, chats[:users], tokens, threads)
        ctx = contexts[users]
        served = served_loop(native, ctx, chats[:users], tokens)
        figures = {"served_tokens_per_s": served["tokens_per_s"], "served_first_s": served["first_s"]}
        if users == 1:
            figures["tokens_per_s"] = decode_loop(native, ctx, prompt, users, tokens)
        print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--serve", action="store_true", help="answer numbers of users on stdin (one thread count)")
    args = parser.parse_args()
    if args.serve:
        return serve(args.threads[0], args.tokens)
    results = run(args.sequences, args.threads, args.tokens, args.runs)
    print("threads  sequences  decoding tokens/s (median, min-max)  serving tokens/s  first tokens s")
    for row in results.values():
        low, high = row["spread"]
        print(
            f"{row['threads']:>7}  {row['sequences']:>9}  {row['tokens_per_s']:7.0f} ({low:.0f}-{high:.0f})"
            f"{row['served_tokens_per_s']:24.1f}  {row['served_first_s']:14.3f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
