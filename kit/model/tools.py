"""Tool calling for the embedded model: tools described in the prompt, calls forced into JSON by a grammar.

A 135M-parameter model does not follow a tool-calling prompt on its own (asked "What is the weather in
Paris?" with a weather tool described, SmolLM2 invents a forecast). So the engine constrains its output with
a GBNF grammar built from the tools' JSON schemas: `{"name": "<tool>", "arguments": {...}}` and nothing else.
When the model must call a tool, and whether it may answer in text instead, is the `ToolTurns` policy:

- "call_then_answer" (the default, for small models): a turn that follows the user's message calls one of
  the tools; a turn that follows tool results answers in text. An agent loop then runs tool -> answer once.
- "model_decides": the grammar allows a call or a text answer (which may not start with "{"); for models
  that can tell when a tool helps.

`bind_tools(tool_choice=...)` overrides it as LangChain defines: "any"/"required" or a tool's name force a
call on every turn, "none" forbids calls, "auto" lets the model decide.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from kit.pipeline.files import blocks_text

ToolTurns = Literal["call_then_answer", "model_decides"]

# An answer in text may be anything that does not open a JSON object (which would be a malformed call).
_TEXT_RULE = "text ::= [^{ \\t\\n] [^\\x00]*"


def openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tools (LangChain tools, functions, pydantic models or OpenAI dicts) in OpenAI's `function` format."""
    return [convert_to_openai_tool(tool) for tool in tools]


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _call_schema(tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": _function(tool)["name"]},
                "arguments": _function(tool).get("parameters") or {"type": "object", "properties": {}},
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    return alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}


def call_grammar(tools: Sequence[dict[str, Any]], *, allow_text: bool) -> str:
    """A GBNF grammar (root rule `root`) for one call of one of `tools`, or a text answer if `allow_text`.

    >>> grammar = call_grammar([{"type": "function", "function": {"name": "now", "parameters": {}}}],
    ...                        allow_text=True)
    >>> grammar.splitlines()[0], '"\\\\"now\\\\""' in grammar
    ('root ::= call | text', True)
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # llama-cpp-python converts schemas itself

    call_rules = json_schema_to_gbnf(json.dumps(_call_schema(tools))).replace("root ::=", "call ::=", 1)
    if not allow_text:
        return "root ::= call\n" + call_rules
    return f"root ::= call | text\n{_TEXT_RULE}\n{call_rules}"


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt paragraph that describes the tools and the call format to the model."""
    lines = [
        "You can call these tools. To call one, answer with only a JSON object "
        '{"name": <tool name>, "arguments": {<arguments>}}.'
    ]
    for tool in tools:
        function = _function(tool)
        arguments = json.dumps((function.get("parameters") or {}).get("properties", {}), ensure_ascii=False)
        lines.append(f"- {function['name']}: {function.get('description', '')} Arguments: {arguments}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ToolMode:
    """What the model may produce on this turn: a call (forced), a call or text, or text only."""

    grammar: str | None
    prompt: str | None

    @property
    def may_call(self) -> bool:
        return self.grammar is not None


def tool_mode(
    tools: Sequence[dict[str, Any]] | None, tool_choice: Any, turns: ToolTurns, messages: Sequence[BaseMessage]
) -> ToolMode:
    """Decide this turn's grammar and tool prompt from the bound tools, tool_choice and the policy."""
    if not tools or tool_choice == "none":
        return ToolMode(None, None)
    if isinstance(tool_choice, dict):  # {"type": "function", "function": {"name": ...}}
        tool_choice = _function(tool_choice).get("name")
    chosen = [tool for tool in tools if _function(tool)["name"] == tool_choice]
    if chosen:
        return ToolMode(call_grammar(chosen, allow_text=False), tools_prompt(chosen))
    if tool_choice in ("any", "required", True):
        return ToolMode(call_grammar(tools, allow_text=False), tools_prompt(tools))
    after_tools = bool(messages) and messages[-1].type == "tool"
    if turns == "call_then_answer" and tool_choice in (None, "auto"):
        if after_tools:
            return ToolMode(None, None)  # answer from the results, in text
        return ToolMode(call_grammar(tools, allow_text=False), tools_prompt(tools))
    return ToolMode(call_grammar(tools, allow_text=True), tools_prompt(tools))


def to_chat_messages(messages: Sequence[BaseMessage], tool_prompt: str | None) -> list[dict[str, str]]:
    """LangChain messages as chat-template messages, tool calls and results written out in words.

    A small model shown its own call as JSON answers with more JSON, and one shown a "tool" turn ignores it
    (measured with SmolLM2 on a weather tool); a call in words and the result as a user turn that asks for
    the answer make it answer from the result.

    >>> from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    >>> call = AIMessage("", tool_calls=[{"name": "now", "args": {}, "id": "1"}])
    >>> chat = to_chat_messages([HumanMessage("Time?"), call, ToolMessage("noon", name="now", tool_call_id="1")], None)
    >>> [m["role"] for m in chat], chat[-1]["content"].splitlines()[0]
    (['user', 'assistant', 'user'], 'The tool now returned: noon')
    """
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    chat: list[dict[str, str]] = []
    for message in messages:
        calls = getattr(message, "tool_calls", None)
        if message.type == "tool":
            chat.append(
                {
                    "role": "user",
                    "content": f"The tool {message.name} returned: {message.text}\nAnswer my question with it.",
                }
            )
        elif calls:
            written = (f"{call['name']}({json.dumps(call['args'], ensure_ascii=False)})" for call in calls)
            chat.append({"role": "assistant", "content": f"{message.text}\nI call {', '.join(written)}.".strip()})
        else:
            # Files as named sections; an image or a recording as a sentence saying the model does not get it.
            chat.append({"role": roles.get(message.type, message.type), "content": blocks_text(message.content)})
    if tool_prompt:
        if chat and chat[0]["role"] == "system":
            chat[0] = {"role": "system", "content": f"{chat[0]['content']}\n\n{tool_prompt}"}
        else:
            chat.insert(0, {"role": "system", "content": tool_prompt})
    return chat


def tool_call_chunk(json_text: str) -> AIMessageChunk:
    """The model's call as a LangChain chunk (an invalid call becomes an invalid tool call, not a crash)."""
    try:
        call = json.loads(json_text)
        name, arguments = call["name"], json.dumps(call.get("arguments", {}), ensure_ascii=False)
    except (ValueError, KeyError, TypeError):
        name, arguments = None, json_text
    chunk = {"name": name, "args": arguments, "id": f"call_{uuid.uuid4().hex[:12]}", "index": 0}
    return AIMessageChunk(content="", tool_call_chunks=[chunk])  # type: ignore[list-item]


def split_call_or_text(pieces: Iterable[str], may_call: bool) -> Iterator[tuple[str, str]]:
    """("text", piece) for a text answer as it streams; ("call", json) once for a call (text opening "{")."""
    if not may_call:
        for piece in pieces:
            yield "text", piece
        return
    held = ""
    deciding = True
    for piece in pieces:
        if not deciding:
            yield "text", piece
            continue
        held += piece
        if held.lstrip():
            if held.lstrip().startswith("{"):
                continue  # a call: gather it whole
            deciding = False
            yield "text", held
    if deciding and held.lstrip().startswith("{"):
        yield "call", held.strip()
    elif deciding and held:
        yield "text", held
