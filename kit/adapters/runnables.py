"""LangChain Runnables as sources: the chain's own output stream, or its event stream to pick the answer.

`runnable_source(chain)` (what `create_app(chain)` uses) streams the chain's own output. For a chain that
calls a model more than once (condense the question, then answer), that output is the final answer only.
With filters (`include_tags=...`) or `steps_role=...` it reads LangChain's event stream (`astream_events`
v2) instead, to pick the answer's model by name, tag or run type and to show the other steps in a bubble of
their own. Chains written for callbacks are in kit.adapters.callbacks; LangGraph graphs in
kit.adapters.graphs. Every source takes the kit's cancel token: models inside the chain see it
(`kit.pipeline.cancel.cancel_scope`), so a reply nobody reads stops between two tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from kit.adapters.admission import admit_models, kit_models, released
from kit.adapters.events import AnswerSelector, EventFilter, ModelTap, answer_only, with_roles
from kit.adapters.inputs import InputMapper, default_to_input, to_messages
from kit.adapters.server_errors import explained
from kit.model.chat_model import ChatLlama
from kit.pipeline.async_sources import iterate
from kit.pipeline.cancel import CancelToken, bound_context
from kit.pipeline.pump import close_iterator
from kit.pipeline.sources import (
    Message,
    Role,
    SourceFn,
    Streamable,
)
from kit.pipeline.usage import Usage
from kit.threads.trace_runs import reply_run_id

_DONE = object()

# Where LangChain keeps a runnable's parts: a sequence's steps, a parallel's branches, a binding's runnable, a
# graph's nodes (and a node's runnable), a branch's or a fallback's runnables.
_PART_ATTRIBUTES = ("steps", "steps__", "bound", "nodes", "branches", "default", "runnable", "fallbacks")


def async_only_parts(runnable: object) -> list[str]:
    """The names of a runnable's parts that have only async code (an `async def` lambda or graph node), which
    `.stream()` cannot run: a chain or graph with any streams through its async API on the kit's loop.

    >>> from langchain_core.runnables import RunnableLambda
    >>> async def shout(text: str) -> str:
    ...     return text.upper()
    >>> async_only_parts(RunnableLambda(str.strip) | RunnableLambda(shout))
    ['shout']
    """
    found: list[str] = []
    seen: set[int] = set()
    pending = [runnable]
    while pending:
        part = pending.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        if _async_only(part):
            found.append(str(getattr(part, "name", None) or type(part).__name__))
        for attribute in _PART_ATTRIBUTES:
            value = getattr(part, attribute, None)
            if isinstance(value, dict):
                value = list(value.values())
            if isinstance(value, list | tuple):
                pending.extend(item for entry in value for item in (entry if isinstance(entry, tuple) else (entry,)))
            elif value is not None and not isinstance(value, str | int | float | bool):
                pending.append(value)
    return sorted(found)


def _async_only(part: object) -> bool:
    # A lambda or graph node (`func`/`afunc`), a generator (`_transform`/`_atransform`), with only the async one.
    return any(
        getattr(part, f"{prefix}a{name}", None) is not None and getattr(part, f"{prefix}{name}", None) is None
        for prefix, name in (("", "func"), ("_", "transform"))
    )


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
        asynchronous: bool | None = None,
    ) -> None:
        self.chain = chain
        # None: async when some part has no sync code (found when the source is built, not per request).
        self.asynchronous = bool(async_only_parts(chain)) if asynchronous is None else asynchronous
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
        config = with_reply_run(self.config)  # read here: the streams below run in the pump's thread
        stream = self._events(value, cancel, config) if self.uses_events else self._output(value, cancel, config)
        return released(explained(stream, messages), admissions)

    def _output(self, value: Any, cancel: CancelToken, run_config: RunnableConfig | None) -> Iterator[Any]:
        # A context of its own carries the cancel token into the chain (and its executor threads or tasks).
        context = bound_context(cancel)
        tap = ModelTap()  # the models' thinking and usage, which a parser at the chain's end would drop
        config = tap.config(run_config)
        if self.asynchronous:  # `.stream()` cannot run async-only parts: the async stream runs on the kit's loop
            iterator = iterate(self.chain.astream(value, config), cancel, owned=True, context=context)
        else:
            iterator = context.run(self.chain.stream, value, config)
        output_usage = Usage()  # the chain's own chunks' usage_metadata: a part that is not a LangChain model's
        try:
            while not cancel.cancelled:
                item = context.run(next, iterator, _DONE)
                yield from tap.drain()
                if item is _DONE:
                    break
                output_usage.read(item)
                yield answer_only(item)
        finally:
            context.run(close_iterator, iterator)
        # Reported once, at the end: every model call's usage, summed; an output chunk's usage_metadata is the
        # same calls' usage again, so it counts only when no model call reported any.
        usage = tap.usage if tap.usage.reported else output_usage
        if usage.reported and not cancel.cancelled:
            yield usage.as_item()

    def _events(self, value: Any, cancel: CancelToken, run_config: RunnableConfig | None) -> Iterator[str | Role]:
        selector = AnswerSelector(final_only=self.final_only, filter=self.filter, steps_role=self.steps_role)
        # LangChain's event stream is async only: it runs on the kit's event loop, with the cancel token bound
        # in the task's context (the chain's tasks and executor calls inherit it).
        stream = self.chain.astream_events(value, run_config, version="v2")
        events = iterate(stream, cancel, owned=True, context=bound_context(cancel))

        def pieces() -> Iterator[tuple[str, str]]:
            for item in events:
                yield from selector.feed(item)
            if not cancel.cancelled:
                yield from selector.finish()

        try:
            yield from with_roles(pieces())
        finally:
            close_iterator(events)  # the chain stops at its next await; its models stop at their next token


def with_reply_run(config: RunnableConfig | None) -> RunnableConfig | None:
    """The config with the root run id the web side chose for this reply (kit.threads.trace_runs), so that
    feedback on the answer reaches its run in LangSmith; a `run_id` of the caller's own stays.

    >>> from kit.threads.trace_runs import reply_run_scope
    >>> with reply_run_scope("0b5f9e9e-6f2a-4c39-9d0e-3f1f0c8a1d2e"):
    ...     str(with_reply_run({"tags": ["a"]})["run_id"])
    '0b5f9e9e-6f2a-4c39-9d0e-3f1f0c8a1d2e'
    """
    run_id = reply_run_id()
    if run_id is None or (config or {}).get("run_id") is not None:
        return config
    return RunnableConfig(**{**(config or {}), "run_id": uuid.UUID(run_id)})  # type: ignore[typeddict-item]


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
    asynchronous: bool | None = None,
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
    - `asynchronous`: stream through the chain's async API on the kit's event loop (default: when some part
      has only async code, see `async_only_parts`; True for a custom runnable that implements only `astream`).

    >>> from langchain_core.runnables import RunnableLambda
    >>> from kit.adapters.inputs import last_user_text
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
        asynchronous=asynchronous,
    )


def recognises(source: object) -> bool:
    """A LangChain Runnable, or anything with `.stream()` (kit.adapters.registry asks)."""
    return isinstance(source, Streamable)


def adapt(source: Any) -> SourceFn:
    """What `create_app(chain)` uses for an object with `.stream()`: `runnable_source(chain)` with its
    defaults (built now, so a chain whose input cannot be built from the history fails at app creation),
    or, for anything else with `.stream()`, a call with the history as LangChain messages."""
    if isinstance(source, Runnable):
        return runnable_source(source)
    return lambda messages, cancel: iter(source.stream(to_messages(messages)))
