"""Which sequence a request runs in and how much of its prompt is already read (prefix reuse across requests).

Each sequence of the batched context keeps the KV cells of what it read and generated after its request ends.
A new request takes the free sequence whose tokens share the longest prefix with its prompt (least recently
used first among equals) and reads only the rest, as llama.cpp's server does with `cache_prompt`. A sequence
taken over by another conversation is first copied to host memory (llama.cpp's per-sequence state), within a
byte budget, least recently used out; a request whose conversation is kept there gets it copied back in, which
costs milliseconds where reading the history again costs seconds (docs/benchmarks.md, "Long conversations").
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kit.model.prefix_cache import MIN_SHIFT, HostCache, common_prefix, shifted_match

log = logging.getLogger(__name__)

# A sequence about to lose at least this many tokens is copied to host memory first: a copy costs far less
# than reading the tokens again (docs/engine.md), but a handful of template tokens is not worth a budget entry.
MIN_SAVE = 16


@dataclass
class ReuseCounters:
    """What prefix reuse did since the engine started (for tests, benchmarks and monitoring)."""

    requests: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose cells were already there
    fed_tokens: int = 0  # prompt tokens read (decoded) for requests
    from_slot: int = 0  # requests that reused at least half their prompt from a sequence
    from_host: int = 0  # ... after copying a state back from host memory
    shifted: int = 0  # requests whose newest turns were moved down after old turns were dropped
    saved: int = 0  # sequence states copied out to host memory
    copied_tokens: int = 0  # tokens whose cells were copied out or back in
    copy_s: float = 0.0  # time those copies took


@dataclass(frozen=True)
class _Plan:
    """How much of a prompt a sequence can serve: its common prefix, then `length` tokens found `offset`
    further on in its cells (a context shift moves them down; offset 0: none)."""

    shared: int
    offset: int = 0
    length: int = 0

    @property
    def reusable(self) -> int:
        return self.shared + self.length


class SlotMemory:
    """Per-sequence cached tokens over one llama.cpp context's memory, and the host-memory store behind them."""

    def __init__(self, api: Any, ctx: Any, slots: int, host_budget: int) -> None:
        self.api = api
        self.ctx = ctx
        self.memory = api.llama_get_memory(ctx)
        self.tokens: list[list[int]] = [[] for _ in range(slots)]  # what each sequence's cells hold, in order
        self.used = [0] * slots  # when each sequence last served (a tick), for least-recently-used choices
        self.tick = 0
        self.host = HostCache(host_budget)
        self.counters = ReuseCounters()
        # The logits after a sequence's last prompt was read, with that prompt's length: the same prompt asked
        # again samples its first token from them, so its greedy reply is the same as the first time (reading
        # the last token again, alone, would move the logits; docs/engine.md, "Determinism").
        self.logits: list[tuple[int, Any] | None] = [None] * slots
        self.can_shift = bool(api.llama_memory_can_shift(self.memory))

    def place(self, prompt: Sequence[int], free: Sequence[int], reuse: bool, shift: bool) -> tuple[int, int, Any]:
        """Choose a free sequence for `prompt`, leave only reusable cells in it: (sequence, tokens reused, logits).

        The prompt's last token is read again (its logits give the first reply token) unless the sequence read
        exactly this prompt before: then its logits come back, and nothing is read.
        """
        self.tick += 1
        # Where a request goes that brings nothing of its own: an empty sequence, else the least recently used.
        empty = [seq for seq in free if not self.tokens[seq]]
        spare = empty[0] if empty else min(free, key=lambda seq: self.used[seq])
        if not reuse:
            self._cut(spare, 0, save=True)
            return (*self._count(spare, prompt, 0, "none"), None)
        matches = {seq: self._plan(seq, prompt, shift) for seq in free}
        best = max(free, key=lambda seq: (matches[seq].reusable, -self.used[seq]))
        shared = matches[best].reusable
        if empty and shared * 2 < len(self.tokens[best]):
            best, shared = spare, 0  # another conversation's cells stay where they are while a slot is empty
        key, in_host = self.host.best(prompt)
        if in_host > shared and in_host > MIN_SAVE:
            state = self.host.pop(key)  # before the slot's own state goes out: the budget may not hold both
            self._cut(spare, 0, save=True)
            self._restore(spare, key, state)
            best, origin = spare, "host"
            plan = self._plan(best, prompt, shift)  # the state brought back holds other tokens than before
        else:
            origin, plan = "slot", matches[best]
        shared = self._reuse(best, plan)
        kept = self.logits[best]
        primed = kept[1] if shared >= len(prompt) and kept is not None and kept[0] == len(prompt) else None
        shared = len(prompt) if primed is not None else min(shared, len(prompt) - 1)
        self._cut(best, shared, save=True)
        return (*self._count(best, prompt, shared, origin), primed)

    def remember(self, seq: int, length: int, logits: Any, n_vocab: int) -> None:
        """Keep the logits read after a prompt of `length` tokens in `seq` (a pointer to `n_vocab` floats)."""
        import numpy

        self.logits[seq] = (length, numpy.ctypeslib.as_array(logits, shape=(n_vocab,)).copy())

    def _count(self, seq: int, prompt: Sequence[int], shared: int, origin: str) -> tuple[int, int]:
        counters = self.counters
        counters.requests += 1
        counters.prompt_tokens += len(prompt)
        counters.reused_tokens += shared
        counters.fed_tokens += len(prompt) - shared
        if shared * 2 >= len(prompt):
            counters.from_host += origin == "host"
            counters.from_slot += origin == "slot"
        self.used[seq] = self.tick
        return seq, shared

    def _plan(self, seq: int, prompt: Sequence[int], shift: bool) -> _Plan:
        """What sequence `seq` could serve of `prompt`: its common prefix, and (with `shift`) the newest turns
        further on in its cells, to be moved down over the dropped ones."""
        cached = self.tokens[seq]
        shared = common_prefix(cached, prompt)
        if shift and self.can_shift and shared < min(len(cached), len(prompt)):
            offset, length = shifted_match(cached, prompt, shared)
            if offset and length >= MIN_SHIFT:
                return _Plan(shared, offset, length)
        return _Plan(shared)

    def _reuse(self, seq: int, plan: _Plan) -> int:
        """Make sequence `seq` hold the reusable prefix `plan` found (a context shift if it has one)."""
        if not plan.offset:
            return plan.shared
        api, shared, offset, cached = self.api, plan.shared, plan.offset, self.tokens[seq]
        end = shared + offset + plan.length
        # Drop the old turns' cells and move the newest turns' cells down (RoPE is re-applied by llama.cpp).
        api.llama_memory_seq_rm(self.memory, seq, end, -1)
        api.llama_memory_seq_rm(self.memory, seq, shared, shared + offset)
        api.llama_memory_seq_add(self.memory, seq, shared + offset, end, -offset)
        self.tokens[seq] = cached[:shared] + cached[shared + offset : end]
        self.logits[seq] = None
        self.counters.shifted += 1
        log.info("context shift: %d cached tokens moved down by %d", plan.length, offset)
        return plan.reusable

    def _cut(self, seq: int, keep: int, save: bool) -> None:
        """Keep only the first `keep` tokens' cells of `seq` (copying the whole state to host memory first)."""
        cached = self.tokens[seq]
        if keep >= len(cached):
            return
        if save and len(cached) - keep >= MIN_SAVE and self.host.budget > 0:
            self._save(seq)
        self.api.llama_memory_seq_rm(self.memory, seq, keep, -1)
        del cached[keep:]
        if (self.logits[seq] or (0,))[0] > keep:
            self.logits[seq] = None

    def _save(self, seq: int) -> None:
        started = time.perf_counter()
        size = self.api.llama_state_seq_get_size(self.ctx, seq)
        if size > self.host.budget:
            return
        buffer = (ctypes.c_ubyte * size)()
        written = self.api.llama_state_seq_get_data(self.ctx, buffer, size, seq)
        if written:
            self.host.put(self.tokens[seq], bytes(buffer)[:written])
            self._copied(len(self.tokens[seq]), started)
            self.counters.saved += 1

    def _copied(self, tokens: int, started: float) -> None:
        self.counters.copied_tokens += tokens
        self.counters.copy_s += time.perf_counter() - started

    def _restore(self, seq: int, key: tuple[int, ...], state: bytes | None) -> None:
        if state is None:
            return
        started = time.perf_counter()
        self.logits[seq] = None
        buffer = (ctypes.c_ubyte * len(state)).from_buffer_copy(state)
        if self.api.llama_state_seq_set_data(self.ctx, buffer, len(state), seq):
            self.tokens[seq] = list(key)
            self._copied(len(key), started)
        else:  # llama.cpp could not place it (no room): read it again instead
            self.api.llama_memory_seq_rm(self.memory, seq, -1, -1)
            self.tokens[seq] = []

    def forget(self, seq: int) -> None:
        """Clear sequence `seq` (its cells may not match its tokens: a failed decode, or reuse turned off)."""
        self.api.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.tokens[seq] = []
        self.logits[seq] = None
