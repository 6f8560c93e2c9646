"""Chains written for callbacks (the StreamingStdOutCallbackHandler pattern), run unchanged in a thread."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import Runnable

from kit.adapters.admission import admit_models, kit_models, released
from kit.adapters.inputs import InputMapper, default_to_input, to_messages
from kit.adapters.server_errors import explained
from kit.model.chat_model import ChatLlama
from kit.model.engine import Cancelled
from kit.pipeline.cancel import CancelToken, bind_cancel
from kit.pipeline.pump import Failed, Finished, receive
from kit.pipeline.shapes import read_thinking
from kit.pipeline.sources import (
    Message,
    to_text,
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
        message = getattr(chunk, "message", None)
        thinking = read_thinking(message) if message is not None else ""
        if thinking:  # a reasoning model's thought: the pipeline puts it in the thinking bubble
            self.tokens.put({"thinking": thinking})
        text = to_text(message) if message is not None else token
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
        return released(explained(self._run(value, cancel), messages), admit_models(self.models, cancel))

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
