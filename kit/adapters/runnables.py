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

import asyncio
import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from kit.adapters.admission import admit_models, kit_models, released
from kit.adapters.events import AnswerSelector, EventFilter, with_roles
from kit.adapters.inputs import InputMapper, default_to_input, to_messages
from kit.model.chat_model import ChatLlama
from kit.pipeline.cancel import CancelToken, bind_cancel
from kit.pipeline.pump import Failed, Finished, close_iterator, receive
from kit.pipeline.sources import (
    Message,
    Role,
    SourceFn,
    Streamable,
)

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
