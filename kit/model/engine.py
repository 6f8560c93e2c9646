"""One embedded model shared by every user of a process: admission, the FIFO queue and the batched engine.

A llama.cpp context is not thread-safe and the model is loaded once per process, so each model has an
`Engine`: requests are admitted before the first byte (beyond the slots and `max_queue`, a 503), wait in
first-come-first-served order for one of the batch's slots (kit.model.batching), and stream each token as it
is sampled. A waiting request costs nothing but a queue entry; its client keeps receiving heartbeats from the
kit's pump. A request whose client leaves drops out of the queue, or frees its slot at the next decode step.
A conversation longer than a slot's context loses its oldest turns (kit.model.fit), never its system prompt.
Engines are shared per settings (`engine_for`); `Engine.close` and `close_engines` end them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kit.errors import ChatError, ServiceBusy
from kit.model.batching import DEFAULT_SLOTS, Request, Scheduler, check_options
from kit.model.chunks import ChatText, merge_texts
from kit.model.cpu import inspect_llama_build
from kit.model.documents import fit_documents
from kit.model.fit import fit_messages
from kit.model.remote import RemoteEngine, remote_engine
from kit.model.settings import DEFAULT_N_CTX, INSTALL_LLAMA, LlamaSettings, ModelUnavailable
from kit.model.slots import ReuseCounters
from kit.pipeline.cancel import CancelToken, current_cancel
from kit.pipeline.observe import ENGINE_WATCHERS, EngineState
from kit.pipeline.pump import Finished, receive, receive_grouped

log = logging.getLogger(__name__)
CLOSED = "This engine was closed: engine_for(settings) gives a new one."


class Admission:
    """A request's place among those allowed to use a model; `release()` gives it back."""

    def __init__(self, cancel: CancelToken) -> None:
        self.cancel = cancel
        self.released = False

    @property
    def active(self) -> bool:
        return not self.released and not self.cancel.cancelled

    def release(self) -> None:
        self.released = True


class Cancelled(Exception):
    """The request was cancelled (its client left) before the model could serve it."""


class Engine(ChatText):
    """One llama.cpp model serving up to `slots` generations at once (continuous batching), the rest in FIFO order.

    `n_ctx` is each user's context (a slot); the batched context holds `slots * n_ctx` tokens. `n_threads`
    None uses every core: bench/bench_batching.py measures a bare greedy loop with 1 and 2 threads, and on 2
    cores llama.cpp's default (half the cores) leaves a third of the speed unused. `host_cache_mb` bounds the
    finished conversations' states kept in host memory (kit.model.slots).
    """

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        poll_s: float = 0.5,
        slots: int = DEFAULT_SLOTS,
        host_cache_mb: int = 0,
    ):
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.slots = slots
        self.host_cache_mb = host_cache_mb
        self.closed = False
        # A safety net only: a cancel wakes its waiting consumer at once (`run`). Polling every 20 ms, as
        # before, woke every stream's thread 50 times a second to take the GIL from the scheduler.
        self.poll_s = poll_s
        self._llama: Any = None
        self._formatter: Any = None
        self._scheduler: Scheduler | None = None
        self._load_lock = threading.Lock()
        self._cond = threading.Condition()
        self._admitted: weakref.WeakSet[Admission] = weakref.WeakSet()

    # -- admission (before the first byte) ---------------------------------------------------------

    def admit(self, cancel: CancelToken, max_queue: int) -> Admission:
        """Take a place for a request now, or raise ServiceBusy when the slots are full and `max_queue` wait.

        Call it where the kit calls the source, so a refusal is an HTTP 503 rather than a broken stream.
        Places of cancelled or garbage-collected requests free themselves.
        """
        with self._cond:
            busy = sum(1 for admission in self._admitted if admission.active)
            if busy >= max_queue + self.slots:
                raise ServiceBusy(
                    f"The model is busy: {busy - self.slots} request(s) are already waiting for it "
                    f"(the queue limit is {max_queue}). Please try again in a moment."
                )
            admission = Admission(cancel)
            self._admitted.add(admission)
            return admission

    @property
    def in_flight(self) -> int:
        """Admitted requests that have not finished."""
        with self._cond:
            return sum(1 for admission in self._admitted if admission.active)

    @property
    def waiting(self) -> int:
        """Generations queued for a free slot."""
        return self._scheduler.waiting if self._scheduler is not None else 0

    @property
    def running(self) -> int:
        """Generations holding a slot."""
        return self._scheduler.running if self._scheduler is not None else 0

    @property
    def busy(self) -> bool:
        """True while a generation runs."""
        return self.running > 0

    @property
    def reuse(self) -> ReuseCounters:
        """What prefix reuse did so far: requests, prompt tokens reused and read, states kept in host memory."""
        return self._scheduler.memory.counters if self._scheduler is not None else ReuseCounters()

    @property
    def served(self) -> int:
        """Generations started, for tests and monitoring."""
        return self._scheduler.served if self._scheduler is not None else 0

    def state(self) -> EngineState:
        """The queue, the slots and the token counts now (what the kit's Prometheus metrics show)."""
        scheduler, reuse = self._scheduler, self.reuse
        return EngineState(
            model=self.model_path.stem,
            slots=self.slots,
            waiting=self.waiting,
            running=self.running,
            prompt_tokens=reuse.prompt_tokens,
            reused_tokens=reuse.reused_tokens,
            generated_tokens=scheduler.generated if scheduler is not None else 0,
        )

    def _changed(self) -> None:
        if ENGINE_WATCHERS:  # nobody watches: nothing is computed
            state = self.state()
            for watcher in list(ENGINE_WATCHERS):
                watcher(id(self), state)

    @property
    def stopped(self) -> int:
        """Generations ended early because their client left (a Stop, a closed connection)."""
        return self._scheduler.stopped if self._scheduler is not None else 0

    # -- loading -----------------------------------------------------------------------------------

    def load(self) -> Any:
        """Load the model (once) and start its batch scheduler; later calls return the same `Llama`."""
        with self._load_lock:
            if self.closed:
                raise ChatError(CLOSED, 503)
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
                except ImportError as error:
                    raise ModelUnavailable(f"llama-cpp-python is not installed: run `{INSTALL_LLAMA}`") from error
                log.info("loading %s (%d slots of %d tokens)", self.model_path.name, self.slots, self.n_ctx)
                _log_llama_build()
                # The Llama object holds the weights and the tokenizer; generations use the batched context.
                llama = Llama(
                    model_path=str(self.model_path), n_ctx=256, n_threads=self.n_threads, flash_attn=True, verbose=False
                )
                eos, bos = llama.token_eos(), llama.token_bos()
                self._formatter = Jinja2ChatFormatter(
                    template=llama.metadata["tokenizer.chat_template"],  # the chat template from the GGUF
                    eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                    bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
                    stop_token_ids=[eos],
                )
                budget = self.host_cache_mb * 2**20
                self._scheduler = Scheduler(llama, self.slots, self.n_ctx, self.n_threads, budget, self._changed)
                self._llama = llama
            return self._llama

    def prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The prompt tokens for `messages` (the GGUF's chat template) and the template's stop strings."""
        llama = self.load()
        result = self._formatter(messages=messages)
        tokens = llama.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        stops = [] if result.stop is None else [result.stop] if isinstance(result.stop, str) else list(result.stop)
        return tokens, stops

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens for `text` (no special tokens, no BOS): for counting, as the tokenizer is thread-safe."""
        return self.load().tokenize(text.encode(), add_bos=False, special=False)

    def detokenize(self, tokens: list[int]) -> str:
        """The text of `tokens` (a character split at the end is dropped)."""
        return self.load().detokenize(tokens).decode("utf-8", errors="ignore")

    def close(self) -> None:
        """Stop the scheduler thread and free the model and its context (requests still there get an error).

        The engine leaves the shared cache, so `engine_for` gives a new one afterwards.
        """
        with self._load_lock:
            self.closed = True
            scheduler, self._scheduler = self._scheduler, None
            llama, self._llama = self._llama, None
        if scheduler is not None:
            scheduler.close()
        if llama is not None:
            llama.close()
        with _engines_lock:
            for key in [key for key, engine in _engines.items() if engine is self]:
                del _engines[key]

    # -- generation --------------------------------------------------------------------------------

    def request(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        cancel: CancelToken | None = None,
        reuse: bool = True,
        **options: Any,
    ) -> Request:
        """The generation for `messages`, fitted to a slot (a ChatError 413 for a message that cannot fit), not
        yet queued: `run` queues it and yields its chunks. `stream` does both."""
        check_options(options)
        room = min(int(options.get("max_tokens") or 256), self.n_ctx // 4)
        # An attached document too long for the context is cut, and the answer starts by saying how much was read.
        chat, cuts = fit_documents(
            [dict(m) for m in messages], self.prompt, self.tokenize, self.detokenize, self.n_ctx - room
        )
        fitted = fit_messages(chat, self.prompt, self.tokenize, self.n_ctx, room)
        stop = options.get("stop") or []
        stops = fitted.stops + ([stop] if isinstance(stop, str) else list(stop))
        cancel = cancel or current_cancel() or CancelToken()
        stops = [s for s in stops if s]
        notes = tuple(cut.note(self.n_ctx) for cut in cuts)
        return Request(fitted.tokens, options, cancel, stops, reuse=reuse, shift=fitted.dropped > 0, notes=notes)

    def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        cancel: CancelToken | None = None,
        reuse: bool = True,
        window_s: float = 0.0,
        **options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Yield llama-cpp-python-style chat-completion chunks for `messages` once a slot is free.

        `messages` are chat-template dicts ({"role": "user", "content": ...}); `options` are max_tokens,
        temperature, top_p, top_k, seed, repeat_penalty, stop (list of strings) and grammar (GBNF text).
        Closing the iterator, or setting `cancel` (default: the token of the enclosing `cancel_scope`),
        leaves the queue or frees the slot at the next decode step. `reuse=False` reads the whole prompt
        from an empty sequence (reproducible whoever used the model before; see docs/engine.md). The last
        chunk (its `finish_reason` set) carries the `usage`: prompt and completion tokens. `window_s`: as `run`.
        """
        yield from self.run(self.request(messages, cancel=cancel, reuse=reuse, **options), window_s)

    def open(
        self,
        messages: Sequence[Mapping[str, str]],
        cancel: CancelToken,
        *,
        reuse: bool = True,
        max_queue: int = 8,
        window_s: float | None = None,
        **options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Take a place now (ServiceBusy before the first byte) and return the reply's chunks, which give the
        place back when they end: what a kit source calls (`RemoteEngine.open` is the same for a server).
        With `window_s`, the stream's coalescing window, text is joined as `run` says before the pump's stages."""
        admission = self.admit(cancel, max_queue)
        try:
            stream = self.stream(messages, cancel=cancel, reuse=reuse, window_s=window_s or 0.0, **options)
        except BaseException:
            admission.release()
            raise
        return _released(stream, admission)

    def run(self, request: Request, window_s: float = 0.0) -> Iterator[Any]:
        """Queue `request` for a slot and yield its chunks; closing the iterator gives the slot back. With a
        `window_s`, text that comes within that time of the last text waits for the window's end, joined into one
        chunk (the engine process sends fewer, larger chunks to a web tier that would coalesce them anyway); the
        first text and the end are not held."""
        scheduler = self._scheduler
        if scheduler is None:
            raise ChatError(CLOSED, 503)
        scheduler.submit(request)
        forget = request.cancel.on_cancel(lambda: request.out.put(Finished()))  # stop waiting at once
        try:
            for note in request.notes:  # before the answer: how much of a long document was read
                yield {"choices": [{"index": 0, "delta": {"content": note}, "finish_reason": None}]}
            if window_s <= 0:
                yield from receive(request.out, request.cancel, self.poll_s)
            else:
                for group in receive_grouped(request.out, request.cancel, window_s, self.poll_s):
                    yield from merge_texts(group)
        finally:
            forget()
            scheduler.leave(request)


def _released(stream: Iterator[dict[str, Any]], admission: Admission) -> Iterator[dict[str, Any]]:
    try:
        yield from stream
    finally:
        admission.release()


_engines: dict[tuple[Path, int, int | None, int, int], Engine] = {}
_engines_lock = threading.Lock()


def _log_llama_build() -> None:
    """The CPU features llama.cpp runs with, and a warning where its AMX code would crash this process."""
    build = inspect_llama_build()
    if build is not None:
        log.info(build.summary())
        if build.warning:
            log.warning(build.warning)


def engine_for(settings: LlamaSettings) -> Engine | RemoteEngine:
    """The process-wide engine for these settings' model file, context size, threads, slots and host cache.

    Created once and kept until `close_engines()` (run at exit) or its own `close()`: each engine holds a
    copy of the model and its context, so settings that differ in these five keep several alive. With an
    engine address (`engine_url`, or KIT_ENGINE_URL), the client of that server instead (kit.model.remote).
    """
    address = settings.engine_address()
    if address is not None:
        return remote_engine(address)
    key = (settings.resolved_path(), settings.n_ctx, settings.n_threads, settings.slots, settings.host_cache_mb)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            path, n_ctx, n_threads, slots, host_cache_mb = key
            engine = _engines[key] = Engine(path, n_ctx, n_threads, slots=slots, host_cache_mb=host_cache_mb)
        return engine


def close_engines() -> int:
    """Close every shared engine (their models and contexts are freed); returns how many were open.

    >>> close_engines() >= 0
    True
    """
    with _engines_lock:
        engines = list(_engines.values())
    for engine in engines:
        engine.close()
    return len(engines)


atexit.register(close_engines)  # scheduler threads and llama.cpp contexts end before the interpreter does
