"""One embedded model shared by every user of a process: admission, the FIFO queue and the batched engine.

A llama.cpp context is not thread-safe and the model is loaded once per process, so each model has an
`Engine`: requests are admitted before the first byte (beyond the slots and `max_queue`, a 503), wait in
first-come-first-served order for one of the batch's slots (kit.model.batching), and stream each token as it
is sampled. A waiting request costs nothing but a queue entry; its client keeps receiving heartbeats from the
kit's pump. A request whose client leaves drops out of the queue, or frees its slot at the next decode step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kit.errors import ServiceBusy
from kit.model.batching import DEFAULT_SLOTS, TURN, Request, Scheduler, check_options
from kit.model.settings import INSTALL_LLAMA, LlamaSettings, ModelUnavailable
from kit.pipeline.cancel import CancelToken, current_cancel
from kit.pipeline.pump import receive

log = logging.getLogger(__name__)


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


class Engine:
    """One llama.cpp model serving up to `slots` generations at once (continuous batching), the rest in FIFO order.

    `n_ctx` is each user's context (a slot); the batched context holds `slots * n_ctx` tokens. `n_threads`
    None uses every core: measured with bench/bench_batching.py on this 2-core machine, a bare greedy loop
    gives 128 tokens/s with 2 threads against 87 with 1 (llama.cpp's default is half the cores), and 8
    sequences together 197 tokens/s against 117.
    """

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        poll_s: float = 0.02,
        slots: int = DEFAULT_SLOTS,
    ):
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.slots = slots
        # How often a waiting consumer checks its cancel token (the token has no callbacks to wait on).
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
        """True while a generation runs (or an `exclusive` holder has the model)."""
        return self.running > 0 or (self._scheduler is not None and self._scheduler.holding)

    @property
    def served(self) -> int:
        """Generations started, for tests and monitoring."""
        return self._scheduler.served if self._scheduler is not None else 0

    # -- loading -----------------------------------------------------------------------------------

    def load(self) -> Any:
        """Load the model (once) and start its batch scheduler; later calls return the same `Llama`."""
        with self._load_lock:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
                except ImportError as error:
                    raise ModelUnavailable(f"llama-cpp-python is not installed: run `{INSTALL_LLAMA}`") from error
                log.info("loading %s (%d slots of %d tokens)", self.model_path.name, self.slots, self.n_ctx)
                # The Llama object's own small context serves `exclusive` holders; generations use the batch.
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
                self._scheduler = Scheduler(llama, self.slots, self.n_ctx, self.n_threads)
                self._llama = llama
            return self._llama

    def prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The prompt tokens for `messages` (the GGUF's chat template) and the template's stop strings."""
        llama = self.load()
        result = self._formatter(messages=messages)
        tokens = llama.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        stops = [] if result.stop is None else [result.stop] if isinstance(result.stop, str) else list(result.stop)
        return tokens, stops

    # -- generation --------------------------------------------------------------------------------

    def stream(
        self, messages: Sequence[Mapping[str, str]], *, cancel: CancelToken | None = None, **options: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield llama-cpp-python-style chat-completion chunks for `messages` once a slot is free.

        `messages` are chat-template dicts ({"role": "user", "content": ...}); `options` are max_tokens,
        temperature, top_p, top_k, seed, repeat_penalty, stop (list of strings) and grammar (GBNF text).
        Closing the iterator, or setting `cancel` (default: the token of the enclosing `cancel_scope`),
        leaves the queue or frees the slot at the next decode step.
        """
        check_options(options)
        tokens, stops = self.prompt([dict(m) for m in messages])
        stop = options.get("stop") or []
        stops += [stop] if isinstance(stop, str) else list(stop)
        request = Request(tokens, options, cancel or current_cancel() or CancelToken(), [s for s in stops if s])
        yield from self._run(request)

    def _run(self, request: Request) -> Iterator[Any]:
        scheduler = self._scheduler
        assert scheduler is not None
        scheduler.submit(request)
        try:
            yield from receive(request.out, request.cancel, self.poll_s)
        finally:
            scheduler.leave(request)

    @contextlib.contextmanager
    def exclusive(self, cancel: CancelToken | None = None) -> Iterator[Any]:
        """Wait for a turn in the same FIFO queue as generations (and for the slots to drain); hold the `Llama`.

        For code that needs the model object itself (tokenize, a raw benchmark) without racing the batch:
        llama.cpp is not thread-safe. Raises Cancelled if `cancel` is set while waiting.
        """
        llama = self.load()
        request = Request([], {}, cancel or current_cancel() or CancelToken(), [], handover=threading.Event())
        turns = self._run(request)
        try:
            if next(turns, None) is not TURN:
                raise Cancelled("cancelled while waiting for the model")
            yield llama
        finally:
            assert request.handover is not None
            request.handover.set()
            turns.close()

    def chat(
        self, messages: Sequence[Mapping[str, str]], *, cancel: CancelToken | None = None, **options: Any
    ) -> Iterator[str]:
        """Like `stream`, but yields only the non-empty text of each chunk."""
        for chunk in self.stream(messages, cancel=cancel, **options):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                yield text


_engines: dict[tuple[Path, int, int | None, int], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(settings: LlamaSettings) -> Engine:
    """The process-wide engine for these settings' model file, context size, threads and slots (created once)."""
    path, n_ctx, n_threads, slots = key = (settings.resolved_path(), settings.n_ctx, settings.n_threads, settings.slots)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = Engine(path, n_ctx=n_ctx, n_threads=n_threads, slots=slots)
        return engine
