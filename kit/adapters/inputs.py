"""Deep Chat's history as a chain's input: messages, keyed dicts, the last question."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable

from kit.pipeline.files import (
    FILE_SECTION,
    Attachment,
    blocks_text,
    data_url,
    file_label,
    file_section,
    with_files_text,
)
from kit.pipeline.sources import (
    Message,
    conversation,
)

InputMapper = Callable[[list[Message]], Any]
"""Builds a chain's input from Deep Chat's history (system prompt first, then user/ai turns)."""

QUESTION_KEYS = ("question", "input", "query", "message")
HISTORY_KEYS = ("chat_history", "history", "messages")
SYSTEM_KEYS = ("system", "system_prompt", "system_message")


# -- input: Deep Chat history -> chain input ---------------------------------------------------------


def to_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """Deep Chat messages as LangChain messages (user -> human, ai -> ai, system -> system).

    Other roles are not part of the conversation (`kit.pipeline.sources.conversation`): the "thinking" and
    "steps" bubbles the kit streamed earlier come back with the history, and are not the assistant's words.

    >>> [m.type for m in to_messages([{"role": "system", "text": "Be brief"}, {"role": "user", "text": "Hi"},
    ...                               {"role": "thinking", "text": "A greeting."}, {"role": "steps", "text": "..."},
    ...                               {"role": "ai", "text": "Hello"}])]
    ['system', 'human', 'ai']
    """
    kinds = {"user": HumanMessage, "ai": AIMessage, "assistant": AIMessage, "system": SystemMessage}
    return [kinds[m["role"]](content=message_content(m)) for m in conversation(list(messages))]


def message_content(message: Message) -> str | list[str | dict[str, Any]]:
    r"""A Deep Chat message as a LangChain message's content: its text, with text or PDF files only its text and
    the files as named sections, or, with an image or a recording, content blocks: the text, each text or PDF
    file as a named text block, each image as an `image_url` block with a base64 data
    URL (what OpenAI, Anthropic and Ollama chat models take) and each recording as an `audio` block, each
    image and recording after a text block naming it.

    >>> message_content({"role": "user", "text": "Hi", "files": [  # doctest: +NORMALIZE_WHITESPACE
    ...     {"name": "a.txt", "type": "text/plain", "kind": "text", "content": "PAPAYA"},
    ...     {"name": "p.png", "type": "image/png", "kind": "image", "content": b"\x89PNG"}]})
    [{'type': 'text', 'text': 'Hi'}, {'type': 'text', 'text': '<file name="a.txt" type="text/plain">\nPAPAYA\n</file>'},
     {'type': 'text', 'text': 'Attached image: p.png'},
     {'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,iVBORw=='}}]
    """
    text = str(message.get("text", ""))
    files: list[Attachment] = message.get("files") or []
    if not any(attachment["kind"] in ("image", "audio") for attachment in files):
        # Text alone stays a string: llama-cpp-python's server (0.3.36) answers any list content with a 500 under
        # a text model's chat template ("can only concatenate str (not "list") to str"), and so may other servers.
        return with_files_text(text, files)
    blocks: list[str | dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for attachment in files:
        if attachment["kind"] == "image":
            media = {"type": "image_url", "image_url": {"url": data_url(attachment)}}
        elif attachment["kind"] == "audio":
            media = {"type": "audio", "base64": data_url(attachment).partition(",")[2], "mime_type": attachment["type"]}
        else:
            blocks.append({"type": "text", "text": file_section(attachment)})
            continue
        blocks += [{"type": "text", "text": file_label(attachment)}, media]
    return blocks


def user_bubble(content: str | list[Any]) -> Message:
    r"""A human message's content (as `message_content` built it) as Deep Chat's user bubble for `history`: its text,
    and its files, images with their data URL as `src` (shown as thumbnails), other files by name.

    >>> files = [{"name": "a.txt", "type": "text/plain", "kind": "text", "content": "x"},
    ...          {"name": "p.png", "type": "image/png", "kind": "image", "content": b""}]
    >>> user_bubble(message_content({"text": "Hi", "files": files}))  # doctest: +NORMALIZE_WHITESPACE
    {'role': 'user', 'text': 'Hi', 'files': [{'name': 'a.txt', 'type': 'any'},
     {'name': 'p.png', 'type': 'image', 'src': 'data:image/png;base64,'}]}
    """
    if isinstance(content, str):
        found = list(FILE_SECTION.finditer(content))
        if not found:
            return {"role": "user", "text": content}
        named = [{"name": match.group(2), "type": "any"} for match in found]
        return {"role": "user", "text": content[: found[0].start()].rstrip("\n"), "files": named}
    texts: list[str] = []
    files: list[dict[str, str]] = []
    label: str | None = None
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else "text"
        text = block.get("text", "") if isinstance(block, dict) else str(block)
        if kind == "text" and text.startswith('<file name="'):
            files.append({"name": text[len('<file name="') :].split('"', 1)[0], "type": "any"})
        elif kind == "text" and text.startswith("Attached ") and ": " in text and "\n" not in text:
            label = text.split(": ", 1)[1]
        elif kind == "image_url":
            files.append({"name": label or "image", "type": "image", "src": str(block["image_url"]["url"])})
        elif kind == "audio":
            url = f"data:{block.get('mime_type', 'audio/wav')};base64,{block.get('base64', '')}"
            files.append({"name": label or "recording", "type": "audio", "src": url})
        elif kind == "text":
            texts.append(text)
    return {"role": "user", "text": "\n\n".join(texts), **({"files": files} if files else {})}


def message_text(message: BaseMessage) -> str:
    """A LangChain message's content as text (files as named sections, images and audio as a sentence saying
    they are not shown): for a chain whose input is a string."""
    return blocks_text(message.content)


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
        system_text = "\n\n".join(message_text(m) for m in turns if m.type == "system")
        turns = [m for m in turns if m.type != "system"]
        value: dict[str, Any] = {}
        if question is not None:
            value[question] = message_text(turns.pop()) if turns and turns[-1].type == "human" else ""
        if system is not None:
            value[system] = system_text
        elif system_text:
            turns.insert(0, SystemMessage(content=system_text))
        if history is not None:
            value[history] = turns
        return value

    return to_input


def last_user_text(messages: list[Message]) -> str:
    """The text of the last user message, its files as named sections (for chains whose input is a plain string)."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return "" if last is None else blocks_text(message_content(last))


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
            "to_input=... to kit.adapters.runnables.runnable_source (for example history_input(question='q'))"
        )
    return history_input(question, history, system)
