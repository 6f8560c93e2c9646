"""Continuous batching on llama.cpp: one context, one sequence per slot, every running request decoded together.

A scheduler thread owns the context. Between two decode steps it takes waiting requests into free slots
(first come, first served), feeds long prompts in chunks (so users already streaming keep streaming), decodes
one batch holding a token of every running sequence, samples each with that request's own native sampler
chain, and hands the text to that request's queue at once. A cancelled request leaves its slot at the next
step; its KV cells are cleared so the slot starts empty for the next user.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kit.errors import ChatError
from kit.pipeline.cancel import CancelToken
from kit.pipeline.pump import Failed, Finished

log = logging.getLogger(__name__)

# Options every generation accepts (the contract kit.model.tools and LangChain callers rely on).
OPTIONS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "seed", "repeat_penalty", "stop", "grammar"})
# Prompt tokens fed per decode step across all sequences: bounds one step's time, so streaming users wait at
# most one chunk's prefill (about 60 ms for 128 tokens of SmolLM2 on 2 cores) between two of their tokens.
PROMPT_CHUNK = 128
REPEAT_LAST_N = 64  # llama-cpp-python's create_chat_completion default
# Sequences decoded together. Measured with bench/bench_batching.py (2 cores, 2 threads, greedy, flash
# attention): 1 sequence 169 tokens/s, 8: 221, 16: 231 aggregate. 16 adds 5% to 8 and halves each user's
# speed; 8 keeps each user near 25 tokens/s (faster than anyone reads).
DEFAULT_SLOTS = 8
TURN = object()  # what an Engine.exclusive request receives when the model is its


@dataclass
class Request:
    """One generation: its prompt tokens, options and the queue its chunks travel back through."""

    prompt: list[int]
    options: dict[str, Any]
    cancel: CancelToken
    stops: list[str]
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    stopped: threading.Event = field(default_factory=threading.Event)
    handover: threading.Event | None = None  # Engine.exclusive: the scheduler pauses until this is set

    @property
    def abandoned(self) -> bool:
        return self.stopped.is_set() or self.cancel.cancelled


def check_options(options: dict[str, Any]) -> None:
    """Raise TypeError naming options no generation accepts.

    >>> check_options({"max_tokens": 3, "stop": ["."]})
    >>> check_options({"max_token": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: unknown generation option(s): max_token (accepted: grammar, max_tokens, ...)
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(unknown)} (accepted: {', '.join(sorted(OPTIONS))})")


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict[str, Any]:
    """A chat-completion chunk shaped as llama-cpp-python's `create_chat_completion(stream=True)` yields."""
    delta: dict[str, str] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class _Slot:
    """A running request in its sequence: prompt still to feed, sampler, text held back for stop strings."""

    def __init__(self, seq: int, request: Request, sampler: Any, max_tokens: int) -> None:
        self.seq = seq
        self.request = request
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.to_feed = list(request.prompt)
        self.pos = 0
        self.generated = 0
        self.next_token: int | None = None
        # "ignore" as llama-cpp-python: a stray byte of a broken multi-byte sequence is dropped, never shown as U+FFFD
        self.decoder = codecs.getincrementaldecoder("utf-8")("ignore")
        self.held = ""  # text that may be the start of a stop string


class Scheduler:
    """The batch loop over one llama.cpp context with `slots` sequences of `slot_ctx` tokens each."""

    def __init__(self, llama: Any, slots: int, slot_ctx: int, n_threads: int) -> None:
        import llama_cpp

        self.api = llama_cpp
        self.llama = llama
        self.slots = slots
        self.slot_ctx = slot_ctx
        model = llama.model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slot_ctx * slots
        params.n_batch = max(PROMPT_CHUNK + slots, 512)
        params.n_ubatch = params.n_batch
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = n_threads
        # Flash attention: measured with bench/bench_batching.py on 2 cores, 166 against 146 tokens/s for one
        # sequence and 207 against 169 for 8. The engine's Llama object uses it too, so `exclusive` holders
        # get the same floating point (and greedy replies) as the batch.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.kv_unified = False  # each sequence its own n_ctx / slots cells: a slot cannot crowd the others out
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batched context")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self.batch_size = params.n_batch
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: dict[int, _Slot] = {}
        self.served = 0
        self.holding = False  # an Engine.exclusive holder has the model
        self._thread = threading.Thread(target=self._loop, name="kit-llama-batch", daemon=True)
        self._thread.start()

    # -- requests ---------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._cond:
            self._waiting.append(request)
            self._cond.notify()

    def leave(self, request: Request) -> None:
        request.stopped.set()
        with self._cond:
            if request in self._waiting:
                self._waiting.remove(request)  # leave the queue at once, not when the loop reaches it
            self._cond.notify()

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(1 for request in self._waiting if not request.abandoned)

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    # -- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._has_work():
                    self._cond.wait()
                handover = self._take_waiting()
            if handover is not None:
                self.holding = True
                handover.out.put(TURN)
                assert handover.handover is not None
                handover.handover.wait()  # the holder uses the Llama object in its own thread meanwhile
                self.holding = False
                continue
            try:
                self._step()
            except BaseException as error:  # every running request learns of it
                log.exception("batch step failed")
                for slot in list(self._running.values()):
                    slot.request.out.put(Failed(error))
                    self._finish(slot)

    def _has_work(self) -> bool:
        return bool(self._running) or any(not r.abandoned for r in self._waiting)

    def _take_waiting(self) -> Request | None:
        """Move waiting requests into free slots (FIFO); return an exclusive request once the slots drain."""
        while self._waiting:
            request = self._waiting[0]
            if request.abandoned:
                self._waiting.popleft()
                continue
            if request.handover is not None:
                if self._running:
                    return None  # let the running ones finish first
                return self._waiting.popleft()
            free = [seq for seq in range(self.slots) if seq not in self._running]
            if not free:
                return None
            self._waiting.popleft()
            self._start(free[0], request)
        return None

    def _start(self, seq: int, request: Request) -> None:
        options = request.options
        if len(request.prompt) >= self.slot_ctx:
            request.out.put(
                Failed(
                    ChatError(
                        f"The conversation is too long for the model's context of {self.slot_ctx} tokens per user "
                        f"({len(request.prompt)} tokens): start a new chat.",
                        413,
                    )
                )
            )
            request.out.put(Finished())
            return
        try:
            sampler = self._sampler(options)
        except BaseException as error:  # a bad grammar is that request's error, not the loop's
            request.out.put(Failed(error))
            request.out.put(Finished())
            return
        self.served += 1
        self.api.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self._running[seq] = _Slot(seq, request, sampler, int(options.get("max_tokens") or 256))
        request.out.put(chunk(role="assistant"))

    def _sampler(self, options: dict[str, Any]) -> Any:
        api = self.api
        chain = api.llama_sampler_chain_init(api.llama_sampler_chain_default_params())
        # The order and the history of create_chat_completion's chain (penalties see generated tokens only), so
        # a greedy reply is the same as llama-cpp-python's own.
        penalty = float(options.get("repeat_penalty") or 1.0)
        api.llama_sampler_chain_add(
            chain, api.llama_sampler_init_penalties(self.n_vocab, REPEAT_LAST_N, penalty, 0.0, 0.0)
        )
        grammar = options.get("grammar")
        if grammar:
            sampler = api.llama_sampler_init_grammar(self.vocab, str(grammar).encode(), b"root")
            if not sampler:
                api.llama_sampler_free(chain)
                raise ChatError("the grammar could not be parsed (GBNF, root rule `root`)", 400)
            api.llama_sampler_chain_add(chain, sampler)
        temperature = float(options.get("temperature") or 0.0)
        if temperature <= 0:
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_greedy())
            return chain
        api.llama_sampler_chain_add(chain, api.llama_sampler_init_top_k(int(options.get("top_k") or 40)))
        api.llama_sampler_chain_add(chain, api.llama_sampler_init_top_p(float(options.get("top_p") or 0.95), 1))
        api.llama_sampler_chain_add(chain, api.llama_sampler_init_min_p(0.05, 1))  # create_chat_completion's default
        api.llama_sampler_chain_add(chain, api.llama_sampler_init_temp(temperature))
        seed = options.get("seed")
        api.llama_sampler_chain_add(chain, api.llama_sampler_init_dist(0xFFFFFFFF if seed is None else int(seed)))
        return chain

    def _step(self) -> None:
        """One decode: a token of every generating sequence plus a chunk of prompts still to feed."""
        with self._cond:
            for slot in [s for s in self._running.values() if s.request.abandoned]:
                log.info("generation stopped: its client left")
                self._finish(slot)
            slots = list(self._running.values())
        if not slots:
            return
        entries: list[tuple[int, int, int, bool]] = []
        sampled: list[tuple[_Slot, int]] = []
        for slot in slots:
            if slot.next_token is not None:
                entries.append((slot.next_token, slot.pos, slot.seq, True))
                sampled.append((slot, len(entries) - 1))
                slot.pos += 1
        budget = max(self.batch_size - len(entries) - self.slots, 1)
        budget = min(budget, PROMPT_CHUNK)
        for slot in slots:
            if not slot.to_feed or budget <= 0:
                continue
            piece, slot.to_feed = slot.to_feed[:budget], slot.to_feed[budget:]
            budget -= len(piece)
            for i, token in enumerate(piece):
                last = not slot.to_feed and i == len(piece) - 1
                entries.append((token, slot.pos, slot.seq, last))
                slot.pos += 1
            if not slot.to_feed:
                sampled.append((slot, len(entries) - 1))
        self._fill(entries)
        if self.api.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")
        for slot, index in sampled:
            token = self.api.llama_sampler_sample(slot.sampler, self.ctx, index)
            self._emit(slot, token)

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq

    def _emit(self, slot: _Slot, token: int) -> None:
        """Send the sampled token's text (holding back a possible stop string's start); end when due."""
        api = self.api
        if api.llama_vocab_is_eog(self.vocab, token):
            return self._end(slot, "stop")
        slot.generated += 1
        text = slot.held + slot.decoder.decode(self._piece(token))
        stops = slot.request.stops
        for stop in stops:
            at = text.find(stop)
            if at >= 0:
                if text[:at]:
                    slot.request.out.put(chunk(text[:at]))
                return self._end(slot, "stop", flush=False)
        keep = max((k for stop in stops for k in range(len(stop), 0, -1) if text.endswith(stop[:k])), default=0)
        slot.held = text[len(text) - keep :] if keep else ""
        if text[: len(text) - keep]:
            slot.request.out.put(chunk(text[: len(text) - keep]))
        # At max_tokens inside a multi-byte character, up to 3 more tokens finish it (as create_completion
        # does): a reply cut inside an emoji would lose the character.
        unfinished = bool(slot.decoder.getstate()[0]) and slot.generated < slot.max_tokens + 3
        if (slot.generated >= slot.max_tokens and not unfinished) or slot.pos + 1 >= self.slot_ctx:
            return self._end(slot, "length")
        slot.next_token = token
        return None

    def _piece(self, token: int) -> bytes:
        """The token's bytes (a piece may end inside a multi-byte character)."""
        buffer = ctypes.create_string_buffer(64)
        size = self.api.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        if size < 0:  # the piece is longer than the buffer: llama.cpp says how long
            buffer = ctypes.create_string_buffer(-size)
            size = self.api.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    def _end(self, slot: _Slot, reason: str, flush: bool = True) -> None:
        rest = slot.held + slot.decoder.decode(b"", final=True) if flush else ""
        if rest:
            slot.request.out.put(chunk(rest))
        slot.request.out.put(chunk(finish=reason))
        with self._cond:
            self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        """Give the slot back: clear the sequence's KV cells, free its sampler, end the request's stream."""
        if self._running.get(slot.seq) is not slot:
            return
        del self._running[slot.seq]
        self.api.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        self.api.llama_sampler_free(slot.sampler)
        slot.request.out.put(Finished())
