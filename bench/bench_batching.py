"""The limit: a bare llama.cpp greedy decode loop (low-level API, one context, N sequences in one batch).

No kit, no sampler chain beyond greedy, no text decoding: what the hardware gives for this model and thread
count. The kit's batched engine is measured against it (one user: kit tokens/s ÷ limit).

    python -m bench.bench_batching [--sequences 1 4 8 16] [--threads 1 2] [--tokens 96] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from kit.model.settings import default_model_path

PROMPT = "Write a long story about a dragon who learns to bake bread."


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


def prefill_seconds(prompts: list[list[int]], threads: int) -> float:
    """Seconds llama.cpp takes to read `prompts` (one sequence each) in full batches: no user asking with them
    at once can see a first token sooner."""
    native = NativeModel(str(default_model_path()))
    api = native.api
    ctx = native.context(n_ctx=len(prompts) * 1024, n_seq=len(prompts), threads=threads)
    batch = api.llama_batch_init(512, 0, 1)
    entries = [(token, i, seq, i == len(p) - 1) for seq, p in enumerate(prompts) for i, token in enumerate(p)]
    try:
        started = time.perf_counter()
        for start in range(0, len(entries), 512):
            _fill(api, batch, entries[start : start + 512])
            if api.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompts")
        return time.perf_counter() - started
    finally:
        api.llama_batch_free(batch)
        api.llama_free(ctx)


def run(sequences: list[int], threads: list[int], tokens: int, runs: int) -> dict[str, Any]:
    """Aggregate tokens/s (median and spread over `runs`) for each thread count and sequence count."""
    native = NativeModel(str(default_model_path()))
    prompt = native.tokenize(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    results: dict[str, Any] = {}
    for n_threads in threads:
        for n_seq in sequences:
            ctx = native.context(n_ctx=n_seq * (len(prompt) + tokens + 8), n_seq=n_seq, threads=n_threads)
            try:
                figures = [decode_loop(native, ctx, prompt, n_seq, tokens) for _ in range(runs)]
            finally:
                native.api.llama_free(ctx)
            results[f"{n_threads}x{n_seq}"] = {
                "threads": n_threads,
                "sequences": n_seq,
                "tokens_per_s": statistics.median(figures),
                "spread": (min(figures), max(figures)),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    results = run(args.sequences, args.threads, args.tokens, args.runs)
    print("threads  sequences  aggregate tokens/s (median, min-max)")
    for row in results.values():
        low, high = row["spread"]
        print(f"{row['threads']:>7}  {row['sequences']:>9}  {row['tokens_per_s']:7.0f} ({low:.0f}-{high:.0f})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
