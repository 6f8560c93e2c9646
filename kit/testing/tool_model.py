"""A scripted chat model that calls a tool: a deterministic stand-in for an agent's model in tests and notebooks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

RunManager = CallbackManagerForLLMRun | None
ToolCallFor = Callable[[str], tuple[str, dict[str, Any]] | None]
"""The user's text to (tool name, arguments), or None to answer without a tool."""


class ScriptedToolModel(BaseChatModel):
    """Calls a tool for each new user message (as `tool_call_for` says), then, once the tool answered (or a
    person rejected the call), replies `Done: <the result's last line>` word by word.

    >>> model = ScriptedToolModel(tool_call_for=lambda text: ("send_email", {"to": text}))
    >>> model.invoke("bob").tool_calls[0]["args"]
    {'to': 'bob'}
    >>> model.invoke([ToolMessage("sent", tool_call_id="1")]).text
    'Done: sent'
    """

    tool_call_for: ToolCallFor
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-model"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedToolModel:
        return self  # the script already knows which tool it calls

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        self.calls += 1
        last = messages[-1]
        if isinstance(last, HumanMessage):
            call = self.tool_call_for(last.text)
            if call is not None:
                name, args = call
                return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}"}])
            return AIMessage(f"You said: {last.text}")
        if isinstance(last, ToolMessage):  # the result's last line (an edited call's result starts with a notice)
            return AIMessage(f"Done: {(last.text.splitlines() or [''])[-1]}")
        return AIMessage(f"Done: {json.dumps(last.text)}")

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: RunManager = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages)
        if reply.tool_calls:
            chunk = AIMessageChunk("", tool_calls=reply.tool_calls)
            yield ChatGenerationChunk(message=chunk)
            return
        words = reply.text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            if run_manager is not None:
                run_manager.on_llm_new_token(piece)
            yield ChatGenerationChunk(message=AIMessageChunk(piece))
