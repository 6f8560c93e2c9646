"""Read and validate a Deep Chat request body (JSON, or multipart when files are attached)."""

from __future__ import annotations

import json
from typing import Any

from flask import Request

from kit.errors import ChatError
from kit.pipeline.sources import Message

MAX_MESSAGES = 1_000


class BadRequest(ChatError):
    """The body is not a Deep Chat request; the message says what is wrong."""

    status = 400


def parse_chat_request(request: Request) -> list[Message]:
    """Return the conversation as plain dicts, or raise BadRequest saying what is wrong.

    Files attached in a multipart request are listed (name, type, size) on the last user message.
    """
    if request.mimetype == "multipart/form-data":
        return _parse_multipart(request)
    try:
        body = json.loads(request.get_data(cache=False))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BadRequest('the body must be JSON like {"messages": [{"role": "user", "text": "Hi"}]}') from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with a 'messages' list")
    return _validate_messages(body.get("messages"))


def _parse_multipart(request: Request) -> list[Message]:
    # Deep Chat sends each message as a JSON string in fields message1, message2, ...
    fields = sorted(
        (key for key in request.form if key.startswith("message") and key[len("message") :].isdigit()),
        key=lambda key: int(key[len("message") :]),
    )
    raw_messages: list[Any] = []
    for key in fields:
        try:
            raw_messages.append(json.loads(request.form[key]))
        except (json.JSONDecodeError, RecursionError):
            raise BadRequest(f"form field {key!r} must hold a JSON message") from None
    files = [
        {"name": upload.filename or "", "type": upload.mimetype, "size": _size(upload.stream)}
        for upload in request.files.getlist("files")
    ]
    if not raw_messages:
        raw_messages = [{"role": "user", "text": ""}]
    messages = _validate_messages(raw_messages, allow_empty_text=bool(files))
    if files:
        messages[-1]["files"] = files
    return messages


def _size(stream: Any) -> int:
    stream.seek(0, 2)
    return int(stream.tell())


def _validate_messages(raw: Any, *, allow_empty_text: bool = False) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list of {role, text} objects")
    if len(raw) > MAX_MESSAGES:
        raise BadRequest(f"at most {MAX_MESSAGES} messages are accepted per request")
    messages: list[Message] = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object with 'role' and 'text'")
        role = message.get("role", "user")
        text = message.get("text", "")
        if not isinstance(role, str) or not role or len(role) > 64:
            raise BadRequest(f"messages[{index}].role must be a short string such as 'user' or 'ai'")
        if not isinstance(text, str):
            raise BadRequest(f"messages[{index}].text must be a string")
        messages.append({"role": role, "text": text})
    if not allow_empty_text and not any(m["text"].strip() for m in messages if m["role"] == "user"):
        raise BadRequest("the conversation has no user text to answer")
    return messages
