"""LangChain adapters: stream a Runnable, its final answer only, or a callback-style chain into the kit.

Three ways a chain's tokens reach Deep Chat:

- `runnable_source(chain)` (what `create_app(chain)` uses): the chain's own output stream. For a chain that
  calls a model more than once (condense the question, then answer), that output is the final answer only.
  With filters (`include_tags=...`) or `steps_role=...` it reads LangChain's event stream
  (`astream_events` v2) instead, to pick the answer's model by name, tag or run type and to show the
  other steps in a bubble of their own.
- `callback_source(chain)`: a chain written for callbacks (the StreamingStdOutCallbackHandler pattern)
  runs unchanged in a thread; a handler bridges `on_llm_new_token` into the kit.
- `openai_chat_model(base_url)`: the same chains on any OpenAI-compatible server (scale-out).

Every source takes the kit's cancel token: models inside the chain see it (`kit.llama.cancel_scope`), so
a reply nobody reads stops between two tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig

from kit.llama import Admission, Cancelled, ChatLlama, bind_cancel
from kit.pump import CancelToken, Failed, Finished, close_iterator, receive
from kit.sources import (
    ANSWER_ROLE,
    Message,
    Role,
    SourceAdapter,
    SourceFn,
    Streamable,
    register_source_adapter,
    to_text,
)

log = logging.getLogger(__name__)

InputMapper = Callable[[list[Message]], Any]
"""Builds a chain's input from Deep Chat's history (system prompt first, then user/ai turns)."""

QUESTION_KEYS = ("question", "input", "query", "message")
HISTORY_KEYS = ("chat_history", "history", "messages")
SYSTEM_KEYS = ("system", "system_prompt", "system_message")
_MODEL_TOKEN_EVENTS = ("on_chat_model_stream", "on_llm_stream")
_MODEL_END_EVENTS = ("on_chat_model_end", "on_llm_end")


# -- input: Deep Chat history -> chain input ---------------------------------------------------------


def to_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """Deep Chat messages as LangChain messages (user -> human, ai -> ai, system -> system).

    Other roles, such as a "steps" bubble the kit streamed earlier, are not part of the conversation.

    >>> [m.type for m in to_messages([{"role": "system", "text": "Be brief"}, {"role": "user", "text": "Hi"},
    ...                               {"role": "steps", "text": "..."}, {"role": "ai", "text": "Hello"}])]
    ['system', 'human', 'ai']
    """
    kinds = {"user": HumanMessage, "ai": AIMessage, "assistant": AIMessage, "system": SystemMessage}
    return [kinds[m["role"]](content=str(m.get("text", ""))) for m in messages if m.get("role") in kinds]


def history_input(
    question: str | None = "question", history: str | None = "chat_history", system: str | None = None
) -> InputMapper:
    """A mapper to a dict input: the last user message under `question`, the turns before it (as LangChain
    messages) under `history`, and the system prompt under `system` (or, without a `system` key, first
    in the history). A key set to None is left out; without `question` the history holds every turn.

    >>> to_input = history_input()
    >>> value = to_input([{"role": "user", "text": "Hi"}, {"role": "ai", "text": "Hello"},
    ...                   {"role": "user", "text": "And?"}])
    >>> value["question"], [m.type for m in value["chat_history"]]
    ('And?', ['human', 'ai'])
    """

    def to_input(messages: list[Message]) -> dict[str, Any]:
        turns = to_messages(messages)
        system_text = "\n\n".join(str(m.content) for m in turns if m.type == "system")
        turns = [m for m in turns if m.type != "system"]
        value: dict[str, Any] = {}
        if question is not None:
            value[question] = str(turns.pop().content) if turns and turns[-1].type == "human" else ""
        if system is not None:
            value[system] = system_text
        elif system_text:
            turns.insert(0, SystemMessage(content=system_text))
        if history is not None:
            value[history] = turns
        return value

    return to_input


def last_user_text(messages: list[Message]) -> str:
    """The text of the last user message (for chains whose input is a plain string)."""
    return next((str(m.get("text", "")) for m in reversed(messages) if m.get("role") == "user"), "")


def default_to_input(chain: Runnable[Any, Any]) -> InputMapper:
    """Guess the mapper from the chain's input schema: conventional keys (question/input, chat_history/
    history/messages, system) are filled from the history; a string input gets the last user message;
    anything else (a chat model, a messages list) gets the LangChain messages.

    Raises TypeError naming the keys it cannot fill, so the fix (`to_input=`) is clear at app creation.
    """
    try:
        schema = chain.get_input_jsonschema()
    except Exception:  # some runnables cannot describe their input; messages are the common case
        return to_messages
    if schema.get("type") == "string":
        return last_user_text
    keys = list(schema.get("properties") or {})
    if schema.get("type") != "object" or not keys:
        return to_messages
    return input_for_keys(keys, schema.get("required", []))


def input_for_keys(keys: Sequence[str], required: Sequence[str] = ()) -> InputMapper:
    """The mapper for a dict input with these keys: conventional names are filled from the history.

    Raises TypeError naming the required keys it cannot fill.
    """
    question = next((k for k in QUESTION_KEYS if k in keys), None)
    history = next((k for k in HISTORY_KEYS if k in keys and k != question), None)
    system = next((k for k in SYSTEM_KEYS if k in keys), None)
    unknown = [k for k in required if k not in (question, history, system)]
    if unknown:
        raise TypeError(
            f"cannot tell how to fill the chain's input keys {unknown} from the chat history: pass "
            "to_input=... to kit.chains.runnable_source (for example history_input(question='q'))"
        )
    return history_input(question, history, system)


# -- admission: the kit's embedded models in a chain -------------------------------------------------


def kit_models(chain: object) -> list[ChatLlama]:
    """The kit's own chat models used by a chain (found through LangChain's graph of the chain)."""
    if isinstance(chain, ChatLlama):
        return [chain]
    try:
        nodes = chain.get_graph().nodes.values()  # type: ignore[attr-defined]
    except Exception:
        return []
    found: list[ChatLlama] = []
    for node in nodes:
        if isinstance(node.data, ChatLlama) and all(node.data is not m for m in found):
            found.append(node.data)
    return found


def admit_models(models: Sequence[ChatLlama], cancel: CancelToken) -> list[Admission]:
    """Take a place with each model's engine now (raising ServiceBusy before the first byte)."""
    admissions: list[Admission] = []
    try:
        engines = {id(m.engine): (m.engine, m.max_queue) for m in models}
        for engine, max_queue in engines.values():
            admissions.append(engine.admit(cancel, max_queue))
    except BaseException:
        for admission in admissions:
            admission.release()
        raise
    return admissions


# -- choosing the final answer in the event stream ---------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """LangChain's include/exclude rules for event-stream filters (names, tags, run types).

    >>> answer_only = EventFilter(include_tags=("answer",))
    >>> answer_only.matches({"event": "on_chat_model_stream", "name": "model", "tags": ["answer"]})
    True
    """

    include_names: Sequence[str] | None = None
    include_types: Sequence[str] | None = None
    include_tags: Sequence[str] | None = None
    exclude_names: Sequence[str] | None = None
    exclude_types: Sequence[str] | None = None
    exclude_tags: Sequence[str] | None = None

    @property
    def active(self) -> bool:
        return any(getattr(self, name) is not None for name in self.__dataclass_fields__)

    def matches(self, event: dict[str, Any]) -> bool:
        name, tags = event.get("name"), event.get("tags") or []
        run_type = event["event"].removeprefix("on_").rsplit("_", 1)[0]  # on_chat_model_stream -> chat_model
        includes = (self.include_names, self.include_types, self.include_tags)
        included = all(rule is None for rule in includes) or (
            (self.include_names is not None and name in self.include_names)
            or (self.include_types is not None and run_type in self.include_types)
            or (self.include_tags is not None and any(tag in self.include_tags for tag in tags))
        )
        excluded = (
            (self.exclude_names is not None and name in self.exclude_names)
            or (self.exclude_types is not None and run_type in self.exclude_types)
            or (self.exclude_tags is not None and any(tag in self.exclude_tags for tag in tags))
        )
        return included and not excluded


class AnswerSelector:
    """Turns a v2 event stream into (role, text) pieces: the answer, and optionally the other steps.

    The answer is, in order of precedence: the tokens of model runs matching `filter`; every model's
    tokens (`final_only=False`); or the root run's own output stream (the final answer, whatever model
    produced it). Steps are the tokens of the other model runs. In the root-output case a model token is
    held back one event: if the root then streams, that model is the answer's and its tokens are not steps.
    """

    def __init__(self, *, final_only: bool, filter: EventFilter, steps_role: str | None) -> None:
        self.final_only = final_only
        self.filter = filter
        self.steps_role = steps_role
        self._held: tuple[str, str] | None = None  # (run id, text) of a model token not yet classified
        self._answer_runs: set[str] = set()

    def feed(self, event: dict[str, Any]) -> Iterator[tuple[str, str]]:
        kind = event["event"]
        is_model_token = kind in _MODEL_TOKEN_EVENTS
        if self.filter.active or not self.final_only:
            if is_model_token:
                chosen = self.filter.matches(event) if self.filter.active else True
                role = ANSWER_ROLE if chosen else self.steps_role
                if role is not None:
                    yield role, _chunk_text(event)
            return
        if kind.endswith("_stream") and not event.get("parent_ids"):  # the root run's output
            if self._held is not None:
                self._answer_runs.add(self._held[0])
                self._held = None
            yield ANSWER_ROLE, _chunk_text(event)
        elif self.steps_role is not None and is_model_token and event["run_id"] not in self._answer_runs:
            yield from self._release()
            self._held = (event["run_id"], _chunk_text(event))
        elif self.steps_role is not None and kind in _MODEL_END_EVENTS:
            yield from self._release()

    def finish(self) -> Iterator[tuple[str, str]]:
        yield from self._release()

    def _release(self) -> Iterator[tuple[str, str]]:
        if self._held is not None and self.steps_role is not None:
            yield self.steps_role, self._held[1]
        self._held = None


def _chunk_text(event: dict[str, Any]) -> str:
    return to_text(event.get("data", {}).get("chunk"))


def with_roles(pieces: Iterator[tuple[str, str]]) -> Iterator[str | Role]:
    """Text pieces, with a Role marker wherever the role changes (Deep Chat starts a new bubble)."""
    current = ANSWER_ROLE
    for role, text in pieces:
        if not text:
            continue
        if role != current:
            current = role
            yield Role(role)
        yield text


# -- the event loop that runs astream_events ---------------------------------------------------------


class _EventLoop:
    """One asyncio loop in a daemon thread for every event-stream source of the process.

    LangChain's event stream is async only; a loop per request would create and tear down a thread pool
    each time. Sync model code runs in the loop's executor, sized so that requests waiting for a model
    (in its fair queue) never starve the steps of other chains.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                loop.set_default_executor(
                    concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="kit-chain-step")
                )
                threading.Thread(target=loop.run_forever, name="kit-chain-events", daemon=True).start()
                self._loop = loop
            return self._loop


_events_loop = _EventLoop()
_DONE = object()


# -- sources --------------------------------------------------------------------------------------------


class RunnableSource:
    """A kit source for a LangChain Runnable; build it with `runnable_source`.

    Called with the messages and the cancel token, it builds the input, takes a place with every kit
    model in the chain (ServiceBusy then, before the first byte) and returns the stream.
    """

    def __init__(
        self,
        chain: Runnable[Any, Any],
        *,
        to_input: InputMapper | None = None,
        final_only: bool = True,
        steps_role: str | None = None,
        filter: EventFilter | None = None,
        config: RunnableConfig | None = None,
        models: Sequence[ChatLlama] | None = None,
    ) -> None:
        self.chain = chain
        self.to_input = to_input or default_to_input(chain)
        self.final_only = final_only
        self.steps_role = steps_role
        self.filter = filter or EventFilter()
        self.config = config
        self.models = list(models) if models is not None else kit_models(chain)

    @property
    def uses_events(self) -> bool:
        """The root's output is exactly what `.stream()` yields; only filters, steps, or every model's
        tokens need the (costlier: an event loop, a thread hop per token) event stream."""
        return self.filter.active or self.steps_role is not None or not self.final_only

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[Any]:
        value = self.to_input(messages)
        admissions = admit_models(self.models, cancel)
        stream = self._events(value, cancel) if self.uses_events else self._output(value, cancel)
        return released(stream, admissions)

    def _output(self, value: Any, cancel: CancelToken) -> Iterator[Any]:
        # A context of its own carries the cancel token into the chain (and its executor threads).
        context = contextvars.copy_context()
        context.run(bind_cancel, cancel)
        iterator = context.run(self.chain.stream, value, self.config)
        try:
            while not cancel.cancelled:
                item = context.run(next, iterator, _DONE)
                if item is _DONE:
                    return
                yield item
        finally:
            context.run(close_iterator, iterator)

    def _events(self, value: Any, cancel: CancelToken) -> Iterator[str | Role]:
        selector = AnswerSelector(final_only=self.final_only, filter=self.filter, steps_role=self.steps_role)
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future = asyncio.run_coroutine_threadsafe(self._produce_events(value, cancel, out), _events_loop.get())

        def pieces() -> Iterator[tuple[str, str]]:
            for item in receive(out, cancel):
                yield from selector.feed(item)
            if not cancel.cancelled:
                yield from selector.finish()

        try:
            yield from with_roles(pieces())
        finally:
            future.cancel()  # the chain stops at its next await; its models stop at their next token

    async def _produce_events(self, value: Any, cancel: CancelToken, out: queue.SimpleQueue[Any]) -> None:
        bind_cancel(cancel)  # this task's own context; the chain's tasks and executor calls inherit it
        events = self.chain.astream_events(value, self.config, version="v2")
        try:
            async for event in events:
                out.put(event)
                if cancel.cancelled:
                    break
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            out.put(Failed(error))
        finally:
            await events.aclose()
            out.put(Finished())


def runnable_source(
    chain: Runnable[Any, Any],
    *,
    to_input: InputMapper | None = None,
    final_only: bool = True,
    steps_role: str | None = None,
    include_names: Sequence[str] | None = None,
    include_types: Sequence[str] | None = None,
    include_tags: Sequence[str] | None = None,
    exclude_names: Sequence[str] | None = None,
    exclude_types: Sequence[str] | None = None,
    exclude_tags: Sequence[str] | None = None,
    config: RunnableConfig | None = None,
    models: Sequence[ChatLlama] | None = None,
) -> RunnableSource:
    """A source for `create_app` that streams a LangChain Runnable (LCEL chain, chat model, ...).

    - `to_input(messages)` builds the chain's input from Deep Chat's history (default: guessed from the
      chain's input schema, see `default_to_input`; `history_input(...)` maps other key names).
    - `final_only` (default): stream only the final answer, not the output of earlier model calls.
      `final_only=False` streams the tokens of every model call.
    - include/exclude filters (as in `astream_events`): the answer is the tokens of the model runs they
      select, e.g. `include_tags=["answer"]` with `model.with_config(tags=["answer"])`.
    - `steps_role="steps"`: the other model calls stream into a separate Deep Chat bubble of that role.
    - `models`: the kit models whose queues admit a request (default: found in the chain's graph).

    >>> from langchain_core.runnables import RunnableLambda
    >>> source = runnable_source(RunnableLambda(lambda text: text.upper()), to_input=last_user_text)
    >>> list(source([{"role": "user", "text": "hi"}], cancel=CancelToken()))
    ['HI']
    """
    rules = EventFilter(include_names, include_types, include_tags, exclude_names, exclude_types, exclude_tags)
    return RunnableSource(
        chain,
        to_input=to_input,
        final_only=final_only,
        steps_role=steps_role,
        filter=rules,
        config=config,
        models=models,
    )


def adapt_streamable(source: Any) -> SourceFn:
    """What `create_app(chain)` uses for an object with `.stream()`: `runnable_source(chain)` with its
    defaults (built now, so a chain whose input cannot be built from the history fails at app creation),
    or, for anything else with `.stream()`, a call with the history as LangChain messages."""
    if isinstance(source, Runnable):
        return runnable_source(source)
    return lambda messages, cancel: iter(source.stream(to_messages(messages)))


register_source_adapter(
    SourceAdapter("LangChain Runnable or object with .stream()", lambda o: isinstance(o, Streamable), adapt_streamable)
)


class TokenBridge(BaseCallbackHandler):
    """A callback handler that forwards `on_llm_new_token` into a queue, and stops the chain on cancel.

    Raising from the handler (with `raise_error`) is how LangChain lets a callback end a run: the model
    call fails at its next token, and so does the chain around it.
    """

    raise_error = True

    def __init__(self, cancel: CancelToken) -> None:
        self.cancel = cancel
        self.tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.count = 0

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        if self.cancel.cancelled:
            raise Cancelled("the client left; stopping the chain")
        text = to_text(chunk.message) if chunk is not None and hasattr(chunk, "message") else token
        if text:
            self.count += 1
            self.tokens.put(text)


class CallbackSource:
    """A kit source for a chain written with callbacks; build it with `callback_source`."""

    def __init__(
        self,
        target: Runnable[Any, Any] | Callable[..., Any],
        *,
        to_input: InputMapper | None = None,
        models: Sequence[ChatLlama] | None = None,
    ) -> None:
        self.target = target
        runnable = isinstance(target, Runnable)
        self.to_input = to_input or (default_to_input(target) if runnable else to_messages)  # type: ignore[arg-type]
        self.models = list(models) if models is not None else kit_models(target)

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[str]:
        value = self.to_input(messages)
        return released(self._run(value, cancel), admit_models(self.models, cancel))

    def _invoke(self, value: Any, bridge: TokenBridge) -> Any:
        if isinstance(self.target, Runnable):
            return self.target.invoke(value, config={"callbacks": [bridge]})
        return self.target(value, callbacks=[bridge])

    def _run(self, value: Any, cancel: CancelToken) -> Iterator[str]:
        bridge = TokenBridge(cancel)

        def work() -> None:
            try:
                result = self._invoke(value, bridge)
                if bridge.count == 0:  # a model that reported no tokens: send its whole answer
                    bridge.tokens.put(to_text(result))
            except Cancelled:
                pass
            except BaseException as error:
                bridge.tokens.put(Failed(error))
            finally:
                bridge.tokens.put(Finished())

        context = contextvars.copy_context()
        context.run(bind_cancel, cancel)
        threading.Thread(target=context.run, args=(work,), name="kit-callback-chain", daemon=True).start()
        # When cancelled this returns at once; the thread ends at the chain's next token (the bridge raises).
        yield from receive(bridge.tokens, cancel)


def callback_source(
    target: Runnable[Any, Any] | Callable[..., Any],
    *,
    to_input: InputMapper | None = None,
    models: Sequence[ChatLlama] | None = None,
) -> CallbackSource:
    """A source for a chain that streams through callbacks, not `.stream()`.

    `target` is a Runnable (run as `target.invoke(input, config={"callbacks": [handler]})`) or a function
    `target(input, callbacks=[handler])` that passes the callbacks to its chain, as code written for
    StreamingStdOutCallbackHandler does. It runs in a thread; its tokens reach the client as they come;
    when the client leaves, the handler stops the chain at its next token.
    """
    return CallbackSource(target, to_input=to_input, models=models)


def released(stream: Iterator[Any], admissions: list[Admission]) -> Iterator[Any]:
    try:
        yield from stream
    finally:
        for admission in admissions:
            admission.release()


# -- ready-made models and chains --------------------------------------------------------------------


def openai_chat_model(
    base_url: str,
    *,
    model: str = "local",
    max_tokens: int = 256,
    temperature: float = 0.2,
    seed: int | None = None,
    api_key: str = "not-needed",
    **kwargs: Any,
) -> Any:
    """LangChain's ChatOpenAI pointed at an OpenAI-compatible server (llama.cpp, vLLM, ...) for scale-out.

    langchain-openai sends the token limit as `max_completion_tokens`, which llama-cpp-python's server
    ignores (it would generate until the context is full), so it is also sent as `max_tokens`.
    """
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=base_url,
        api_key=api_key,  # type: ignore[arg-type]
        model=model,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        temperature=temperature,
        seed=seed,
        extra_body={"max_tokens": max_tokens},
        **kwargs,
    )


DEMO_SYSTEM_PROMPT = "You are a friendly assistant. Answer in a few short sentences."


def demo_chain(model: Any = None, system_prompt: str = DEMO_SYSTEM_PROMPT) -> Runnable[Any, str]:
    """prompt | model | text: the chain behind `python -m kit serve --demo chain` (default: embedded model).

    Its input keys (`question`, `chat_history`) are filled from Deep Chat's history automatically.
    """
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    prompt = ChatPromptTemplate.from_messages(
        [("system", system_prompt), MessagesPlaceholder("chat_history"), ("human", "{question}")]
    )
    return prompt | (model if model is not None else ChatLlama()) | StrOutputParser()
