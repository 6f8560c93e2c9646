"""Continuous batching on llama.cpp: one context, one sequence per slot, every running request decoded together.

A scheduler thread owns the context. Between two decode steps it takes waiting requests into free slots
(first come, first served), feeds long prompts in chunks (so users already streaming keep streaming), decodes
one batch holding a token of every running sequence, samples each with that request's own native sampler
chain, and hands the text to that request's queue at once. A cancelled request leaves its slot at the next
step. A slot keeps what it read and generated, so the next turn of a conversation reads only its new tokens
(kit.model.slots chooses the slot and what is reused).
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.errors import ChatError
from kit.model.chunks import text_only
from kit.model.slots import SlotMemory
from kit.pipeline.cancel import CancelToken
from kit.pipeline.outbox import Outbox
from kit.pipeline.pump import Failed, Finished

log = logging.getLogger(__name__)

# Options every generation accepts (the contract kit.model.tools and LangChain callers rely on).
OPTIONS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "seed", "repeat_penalty", "stop", "grammar"})
# Prompt tokens fed per decode step across all sequences: bounds one step's time, so users already streaming
# wait at most one chunk's prefill between two of their tokens (the prompt-reading rate is in
# docs/benchmarks.md, "Long conversations"), while a long prompt still goes in batches large enough to be fast.
PROMPT_CHUNK = 128
REPEAT_LAST_N = 64  # llama-cpp-python's create_chat_completion default
PAD_TOKEN = 0  # what a step puts in a sequence only to keep the ids in its batch consecutive (Scheduler._pad)
# Sequences decoded together. bench/bench_users.py (docs/benchmarks.md, "Many users") shows why 8: the
# aggregate stops growing past 8 sequences on 2 cores, while 16 would halve each user's speed; with 8 each
# user still streams faster than anyone reads.
DEFAULT_SLOTS = 8


@dataclass
class Request:
    """One generation: its prompt tokens, options and the queue its chunks travel back through."""

    prompt: list[int]
    options: dict[str, Any]
    cancel: CancelToken
    stops: list[str]
    out: Outbox = field(default_factory=lambda: Outbox(held=text_only))  # text can wait to be joined
    stopped: threading.Event = field(default_factory=threading.Event)
    reuse: bool = True  # start from cached cells sharing the prompt's prefix (False: from an empty sequence)
    shift: bool = False  # old turns were dropped: the cache may hold the newest ones further on (context shift)
    notes: tuple[str, ...] = ()  # text the answer starts with (how much of a long attached document was read)

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


def too_long(n_ctx: int, tokens: int) -> ChatError:
    """The 413 for a message that alone does not fit in a slot's context."""
    return ChatError(
        f"The message is too long for the model's context of {n_ctx} tokens per user ({tokens} tokens with "
        "the system prompt): shorten it or start a new chat.",
        413,
    )


def shut_down() -> ChatError:
    """The 503 for a request the engine's closing leaves unserved."""
    return ChatError("The model was shut down.", 503)


def plain_greedy(options: dict[str, Any]) -> bool:
    """Greedy with no grammar and no repeat penalty: the sampler chain would return the logits' argmax.

    >>> plain_greedy({"temperature": 0, "repeat_penalty": 1.0}), plain_greedy({"temperature": 0.2})
    (True, False)
    """
    penalty = float(options.get("repeat_penalty") or 1.0)
    return float(options.get("temperature") or 0.0) <= 0 and penalty == 1.0 and not options.get("grammar")


def stop_start(text: str, stops: list[str]) -> int:
    """How many of the text's last characters could begin a stop string (held back until the next token tells).

    >>> stop_start("Hello <|", ["<|end|>"]), stop_start("Hello", ["<|end|>"]), stop_start("Hello <", [])
    (2, 0, 0)
    """
    if not stops:  # most requests: skip the search, a scheduler step's Python runs with cold caches
        return 0
    return max((k for stop in stops for k in range(len(stop), 0, -1) if text.endswith(stop[:k])), default=0)


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

    def __init__(self, seq: int, request: Request, sampler: Any, max_tokens: int, reused: int) -> None:
        self.seq = seq
        self.request = request
        self.sampler = sampler
        self.greedy = plain_greedy(request.options)  # its token is the logits' argmax: no sampler call
        self.max_tokens = max_tokens
        self.to_feed = request.prompt[reused:]
        self.pos = reused
        self.generated = 0
        self.next_token: int | None = None
        # "ignore" as llama-cpp-python: a stray byte of a broken multi-byte sequence is dropped, never shown as U+FFFD
        self.decoder = codecs.getincrementaldecoder("utf-8")("ignore")
        self.held = ""  # text that may be the start of a stop string


class Scheduler:
    """The batch loop over one llama.cpp context with `slots` sequences of `slot_ctx` tokens each."""

    def __init__(
        self,
        llama: Any,
        slots: int,
        slot_ctx: int,
        n_threads: int,
        host_budget: int = 0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
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
        # Flash attention: faster for one sequence and for 8 (bench/bench_batching.py compares both); the
        # child llama.cpp server uses it too, so greedy replies agree between the embedded and served model.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.kv_unified = False  # each sequence its own n_ctx / slots cells: a slot cannot crowd the others out
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batched context")
        self.memory = SlotMemory(llama_cpp, self.ctx, slots, host_budget)
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self.batch_size = params.n_batch
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: dict[int, _Slot] = {}
        self._closing = False
        # Each token's bytes and whether it ends a generation, asked of llama.cpp once: every ctypes call lets go
        # of the GIL, and taking it back waits for whichever request thread holds it (up to its 5 ms switch
        # interval), so two calls per token per slot were a queue of waits in every decode step.
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}
        self._logits_address: int | None = None
        self._logits_views: dict[int, Any] = {}  # numpy views of the logits buffer, by row count (_logits_view)
        self.served = 0
        self.model_name = Path(str(getattr(llama, "model_path", "model"))).stem
        self.generated = 0  # tokens sampled for every request so far
        self.on_change = on_change  # the queue or the slots changed (kit.pipeline.observe.ENGINE_WATCHERS)
        self.stopped = 0  # generations ended early because their client left (Stop, a closed connection)
        self._thread = threading.Thread(target=self._loop, name="kit-llama-batch", daemon=True)
        self._thread.start()

    # -- requests ---------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closing:
                raise shut_down()
            self._waiting.append(request)
            self._cond.notify()
        self.on_change()

    def leave(self, request: Request) -> None:
        request.stopped.set()
        with self._cond:
            waited = request in self._waiting
            if waited:
                self._waiting.remove(request)  # leave the queue at once, not when the loop reaches it
            self._cond.notify()
        if waited:
            self.on_change()

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(1 for request in self._waiting if not request.abandoned)

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def close(self) -> None:
        """Stop the loop (requests still there get an error), then free the context, batch and samplers."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        for slot in list(self._running.values()):
            slot.request.out.put(Failed(shut_down()))
            self._finish(slot)
        for request in self._waiting:
            request.out.put(Failed(shut_down()))
        self._waiting.clear()
        self.api.llama_batch_free(self.batch)
        self.api.llama_free(self.ctx)
        self.memory.host.clear()

    # -- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._has_work() and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                taken = self._take_waiting()
            if taken:
                self.on_change()
            try:
                self._step()
            except BaseException as error:  # every running request learns of it
                log.exception("batch step failed")
                for slot in list(self._running.values()):
                    slot.request.out.put(Failed(error))
                    self.memory.forget(slot.seq)  # its cells may be half written
                    self._finish(slot)

    def _has_work(self) -> bool:
        return bool(self._running) or any(not r.abandoned for r in self._waiting)

    def _take_waiting(self) -> bool:
        """Move waiting requests into free slots, first come first served; True if the queue changed."""
        taken = False
        while self._waiting:
            request = self._waiting[0]
            if request.abandoned:
                self._waiting.popleft()
                taken = True
                continue
            free = [seq for seq in range(self.slots) if seq not in self._running]
            if not free:
                break
            self._waiting.popleft()
            self._start(free, request)
            taken = True
        return taken

    def _start(self, free: list[int], request: Request) -> None:
        options = request.options
        if len(request.prompt) >= self.slot_ctx:  # the engine drops old turns first: only one huge message
            request.out.put(Failed(too_long(self.slot_ctx, len(request.prompt))))
            request.out.put(Finished())
            return
        try:
            sampler = self._sampler(options)
        except BaseException as error:  # a bad grammar is that request's error, not the loop's
            request.out.put(Failed(error))
            request.out.put(Finished())
            return
        self.served += 1
        seq, reused, primed = self.memory.place(request.prompt, free, request.reuse, request.shift)
        slot = self._running[seq] = _Slot(seq, request, sampler, int(options.get("max_tokens") or 256), reused)
        request.out.put(chunk(role="assistant"))
        if primed is not None:  # this very prompt was read in this sequence: its first token needs no decode
            self._emit(slot, self._sample_logits(sampler, primed))

    def _sample_logits(self, sampler: Any, logits: Any) -> int:
        """What `llama_sampler_sample` does, on logits kept from an earlier read instead of the context's."""
        import numpy

        api = self.api
        data = (api.llama_token_data * self.n_vocab)()
        view = numpy.frombuffer(data, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        view["id"], view["logit"], view["p"] = numpy.arange(self.n_vocab), logits, 0.0
        candidates = api.llama_token_data_array(data, self.n_vocab, -1, False)
        api.llama_sampler_apply(sampler, ctypes.byref(candidates))
        token = int(data[candidates.selected].id)
        api.llama_sampler_accept(sampler, token)
        return token

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
                self.stopped += 1
                self._finish(slot)
            # In the order of their sequence ids: with a KV stream per sequence, llama.cpp puts only a run of
            # consecutive ids in one ubatch (split_equal, sequential), so slots in the order they started (a
            # permutation, once prefix reuse chooses them) made a step several graph computations, up to one a slot.
            slots = sorted(self._running.values(), key=lambda slot: slot.seq)
        if not slots:
            return
        entries: list[tuple[int, int, int, bool]] = []
        sampled: list[tuple[_Slot, int]] = []
        prompt_ends: list[tuple[_Slot, int]] = []
        padded: list[tuple[int, int]] = []
        cells = self.memory.tokens
        budget = PROMPT_CHUNK  # the batch holds it and a token (generated or pad) for every sequence
        previous = None
        for slot in slots:
            if slot.next_token is None and not (slot.to_feed and budget > 0):
                continue  # its prompt waits for the next step's budget
            if previous is not None:
                self._pad(range(previous + 1, slot.seq), entries, padded)
            previous = slot.seq
            if slot.next_token is not None:
                entries.append((slot.next_token, slot.pos, slot.seq, True))
                sampled.append((slot, len(entries) - 1))
                cells[slot.seq].append(slot.next_token)
                slot.pos += 1
                continue
            piece, slot.to_feed = slot.to_feed[:budget], slot.to_feed[budget:]
            budget -= len(piece)
            cells[slot.seq].extend(piece)
            for i, token in enumerate(piece):
                last = not slot.to_feed and i == len(piece) - 1
                entries.append((token, slot.pos, slot.seq, last))
                slot.pos += 1
            if not slot.to_feed:
                sampled.append((slot, len(entries) - 1))
                prompt_ends.append((slot, len(entries) - 1))
        self._fill(entries)
        try:
            if self.api.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            for seq, pos in padded:  # the pads' cells go: each sequence holds what it held before
                self.api.llama_memory_seq_rm(self.memory.memory, seq, pos, -1)
        for slot, index in prompt_ends:
            if slot.request.reuse:
                logits = self.api.llama_get_logits_ith(self.ctx, index)
                self.memory.remember(slot.seq, len(slot.request.prompt), logits, self.n_vocab)
        greedy = self._argmax_rows([index for slot, index in sampled if slot.greedy], entries)
        for slot, index in sampled:
            token = greedy[index] if slot.greedy else self.api.llama_sampler_sample(slot.sampler, self.ctx, index)
            self._emit(slot, token)

    def _pad(self, seqs: range, entries: list[tuple[int, int, int, bool]], padded: list[tuple[int, int]]) -> None:
        """A token without logits, at the end of its cells, for each of these sequences between two in the step.

        With a KV stream per sequence, llama.cpp puts only consecutive sequence ids in one ubatch: a gap (0, 1 and
        3 generating, 2 free or its prompt waiting) made each step two graph computations (3 sequences: 24-30 ms a
        step here, against 18-19 ms with 0, 1 and 2). A pad costs one more row; its cell is removed after the decode.
        """
        for seq in seqs:
            slot = self._running.get(seq)  # only this thread changes the running slots while it steps
            pos = slot.pos if slot is not None else len(self.memory.tokens[seq])
            if pos < self.slot_ctx:  # a full sequence has no cell to spare: its gap stays
                entries.append((PAD_TOKEN, pos, seq, False))
                padded.append((seq, pos))

    def _argmax_rows(self, indexes: list[int], entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """The greedy token of each of these batch entries: numpy's argmax over its row of the step's logits.

        llama_sampler_sample copies all n_vocab logits into a candidate array first: a quarter of a millisecond
        per sequence per step here, in the scheduler thread while the decode threads wait for it.
        """
        if not indexes:
            return {}
        rows, row = {}, 0
        for i, entry in enumerate(entries):  # the output rows are the entries that asked for logits, in order
            if entry[3]:
                rows[i] = row
                row += 1
        logits = self._logits_view(row)
        return {index: int(logits[rows[index]].argmax()) for index in indexes}  # row views: no copy

    def _logits_view(self, rows: int) -> Any:
        """The step's logits as a (rows, n_vocab) numpy view, made once per buffer address and row count:
        numpy.ctypeslib.as_array took 47 us a step here (a fifth of a one-user step's Python), the cached view 1."""
        import numpy

        address = ctypes.cast(self.api.llama_get_logits(self.ctx), ctypes.c_void_p).value
        if address != self._logits_address:  # llama.cpp moved its output buffer: the old views point at freed memory
            self._logits_address, self._logits_views = address, {}
        view = self._logits_views.get(rows)
        if view is None:
            floats = (ctypes.c_float * (rows * self.n_vocab)).from_address(address)
            view = self._logits_views[rows] = numpy.frombuffer(floats, numpy.float32).reshape(rows, self.n_vocab)
        return view

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq

    def _emit(self, slot: _Slot, token: int) -> None:
        """Send the sampled token's text (holding back a possible stop string's start); end when due."""
        ends = self._ends.get(token)
        if ends is None:
            ends = self._ends[token] = bool(self.api.llama_vocab_is_eog(self.vocab, token))
        if ends:
            return self._end(slot, "stop")
        slot.generated += 1
        self.generated += 1
        text = slot.held + slot.decoder.decode(self._piece(token))
        stops = slot.request.stops
        for stop in stops:
            at = text.find(stop)
            if at >= 0:
                if text[:at]:
                    slot.request.out.put(chunk(text[:at]))
                return self._end(slot, "stop", flush=False)
        keep = stop_start(text, stops)
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
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._read_piece(token)
        return piece

    def _read_piece(self, token: int) -> bytes:
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
        # The last chunk names the model and the reply's usage, as OpenAI's and llama.cpp's servers send them.
        prompt, generated = len(slot.request.prompt), slot.generated
        usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
        slot.request.out.put({**chunk(finish=reason), "model": self.model_name, "usage": usage})
        with self._cond:
            self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        """Give the slot back (its cells stay for the next turn), free its sampler, end the request's stream."""
        if self._running.get(slot.seq) is not slot:
            return
        del self._running[slot.seq]
        if not slot.request.reuse:
            self.memory.forget(slot.seq)
        self.api.llama_sampler_free(slot.sampler)
        slot.request.out.put(Finished())
        self.on_change()
