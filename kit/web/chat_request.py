"""Read and validate a Deep Chat request body (JSON, or multipart when files are attached)."""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Request
from werkzeug.formparser import FormDataParser

from kit.errors import ChatError
from kit.pipeline.files import Attachment, FileLimits, from_data_url, read_file, read_files, safe_name
from kit.pipeline.sources import Message
from kit.threads.branching import BRANCH_FIELD, BadBranch, BranchRequest, branch_request

MAX_MESSAGES = 1_000


class BadRequest(ChatError):
    """The body is not a Deep Chat request; the message says what is wrong."""

    status = 400


def parse_chat_request(request: Request, limits: FileLimits | None = None) -> list[Message]:
    """Return the conversation as plain dicts, or raise BadRequest (BadFile) saying what is wrong.

    Files attached in a multipart request are read (kit.pipeline.files) onto the last user message, under
    "files"; files that earlier messages carry back (Deep Chat sends an image's data URL, a text file's name
    only) are read too, or listed as sent earlier.
    """
    return parse_chat_body(request, limits)[0]


def parse_chat_body(request: Request, limits: FileLimits | None = None) -> tuple[list[Message], BranchRequest | None]:
    """The conversation and the body's branch field (issue 27: `"kit": {"regenerate" | "edit": id}`, in a
    multipart body the form field `kit` as a JSON string), each checked (BadRequest, BadBranch: 400s)."""
    limits = limits or FileLimits()
    if request.mimetype == "multipart/form-data":
        messages = _parse_multipart(request, limits)
        raw = request.form.get(BRANCH_FIELD)
        try:
            field = {} if raw is None else {BRANCH_FIELD: json.loads(raw)}
        except (json.JSONDecodeError, RecursionError):
            raise BadBranch(f"form field {BRANCH_FIELD!r} must hold JSON") from None
        return messages, branch_request(field, _last_user_text(messages))
    try:
        body = json.loads(request.get_data(cache=False))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BadRequest('the body must be JSON like {"messages": [{"role": "user", "text": "Hi"}]}') from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with a 'messages' list")
    messages = _validate_messages(body.get("messages"), limits)
    return messages, branch_request(body, _last_user_text(messages))


def _last_user_text(messages: list[Message]) -> str:
    return str(messages[-1]["text"]) if messages and messages[-1]["role"] == "user" else ""


class _InMemoryParser(FormDataParser):
    """Werkzeug's form parser with every upload kept in memory (the body limit bounds it): an upload is never
    spooled to a temporary file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["stream_factory"] = lambda *_args, **_kwargs: io.BytesIO()
        super().__init__(*args, **kwargs)


def _parse_multipart(request: Request, limits: FileLimits) -> list[Message]:
    request.form_data_parser_class = _InMemoryParser
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
    # Deep Chat leaves the newest message out when it has no text (the files alone are the question), and
    # sends it without its `files` otherwise.
    files = read_files([_upload(upload, limits) for upload in request.files.getlist("files")], limits)
    last = raw_messages[-1] if raw_messages else None
    if not raw_messages or (files and (not isinstance(last, dict) or last.get("role", "user") != "user")):
        raw_messages.append({"role": "user", "text": ""})
    messages = _validate_messages(raw_messages, limits, allow_empty_text=bool(files))
    if files:
        messages[-1]["files"] = [*messages[-1].get("files", []), *files]
    return messages


def _upload(upload: Any, limits: FileLimits) -> tuple[str, str, bytes]:
    # One byte past the limit is enough to refuse it: a huge part is never read whole.
    return upload.filename or "", upload.mimetype or "", upload.stream.read(limits.max_file_bytes + 1)


def _earlier_files(raw: Any, index: int, limits: FileLimits) -> list[Attachment]:
    """The files a message sent back carries: an image's data URL is read again, other files are named only."""
    if not isinstance(raw, list) or len(raw) > limits.max_files:
        raise BadRequest(f"messages[{index}].files must be a list of at most {limits.max_files} files")
    files: list[Attachment] = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise BadRequest(f"messages[{index}].files must hold objects like {{'name': ..., 'src': ...}}")
        name = safe_name(str(entry.get("name") or "file"))
        found = from_data_url(entry["src"]) if isinstance(entry.get("src"), str) else None
        if found is not None:
            files.append(read_file(name, found[0], found[1], limits))
        else:
            files.append({"name": name, "type": "", "size": 0, "kind": "earlier", "content": None})
    return files


def _validate_messages(raw: Any, limits: FileLimits, *, allow_empty_text: bool = False) -> list[Message]:
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
        if message.get("files") and role == "user":
            messages[-1]["files"] = _earlier_files(message["files"], index, limits)
    if not allow_empty_text and not any(m["text"].strip() for m in messages if m["role"] == "user"):
        raise BadRequest("the conversation has no user text to answer")
    return messages
