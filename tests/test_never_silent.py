"""Never silent: a source the kit cannot read gives a clear error naming what it got and what to pass instead,
in the chat and in the log, never an empty bubble; an unknown source type fails when the app is created."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kit import create_app
from kit.pipeline.cancel import CancelToken
from kit.pipeline.shapes import SHAPES, read_text
from kit.pipeline.sources import UnreadableItem, texts
from kit.serving.client import chat_body, stream_chat


@dataclass
class VendorChunk:
    """An SDK object of a shape the kit does not know (its text is under `payload`)."""

    payload: str


def vendor_chunks(messages: list[dict[str, Any]]) -> Iterator[VendorChunk]:
    yield from (VendorChunk("Hello"), VendorChunk(" world"))


def the_error(server_url: str) -> tuple[str, str]:
    """The one error the user sees, whether it came as an HTTP error or as the stream's last event; and the text."""
    response = httpx.post(server_url + "chat-stream", json=chat_body("hi"))
    if response.status_code != 200:
        return response.json()["error"], ""
    reply = stream_chat(server_url + "chat-stream", "hi")
    assert len(reply.errors) == 1, reply.events
    assert reply.events[-1] == {"error": reply.errors[0]}, "the error is the stream's last event"
    return reply.errors[0], reply.text


def test_items_of_an_unknown_shape_give_one_error_naming_the_type_and_the_advice(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(vendor_chunks))
    with caplog.at_level(logging.WARNING):
        error, text = the_error(server.url)
    assert text == ""
    assert "2 item(s) but no text" in error and "VendorChunk" in error, error
    assert "Yield str pieces" in error and "OpenAI chat-completion chunk" in error, error
    assert any(error in record.getMessage() for record in caplog.records), "the same sentence is in the log"


@pytest.mark.parametrize(
    ("items", "fragment"),
    [([], "ended without yielding anything"), ([None, "", {"choices": []}], "3 item(s), none with any text")],
)
def test_a_source_without_any_text_is_an_error_not_an_empty_bubble(serve, items, fragment) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(lambda messages: iter(items)))
    error, text = the_error(server.url)
    assert fragment in error and text == ""


def test_unreadable_items_between_text_are_skipped_with_one_warning(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    def mixed(messages: list[dict[str, Any]]) -> Iterator[Any]:
        yield from ("東京は", VendorChunk("?"), "日本の", VendorChunk("?"), "首都です。")

    server = serve(create_app(mixed, granularity="chunk", coalesce_ms=0))
    with caplog.at_level(logging.WARNING):
        reply = stream_chat(server.url + "chat-stream", "hi")
    assert (reply.text, reply.errors) == ("東京は日本の首都です。", [])
    warnings = [record.getMessage() for record in caplog.records if "cannot read" in record.getMessage()]
    assert len(warnings) == 1 and "VendorChunk" in warnings[0], warnings


@pytest.mark.parametrize("source", [42, VendorChunk("x"), b"bytes"])
def test_a_source_of_an_unknown_type_fails_when_the_app_is_created(source) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError) as raised:
        create_app(source)
    message = str(raised.value)
    assert "callable taking the message list" in message and "LangChain" in message, message
    assert type(source).__name__ in message


def test_every_shape_in_the_table_is_named_and_tried_in_order() -> None:
    names = [shape.name for shape in SHAPES]
    assert len(set(names)) == len(names)
    # A plain str is read as itself before any structural guess.
    assert read_text("text") == "text" and SHAPES[0].recognises("text")


def test_a_stream_stopped_before_its_first_text_is_not_reported_as_an_empty_source(caplog) -> None:  # type: ignore[no-untyped-def]
    stopped = CancelToken()
    stopped.cancel()
    with caplog.at_level(logging.WARNING):
        assert list(texts(iter([]), cancel=stopped)) == []
    assert not [r for r in caplog.records if "ended without yielding" in r.getMessage()]
    with pytest.raises(UnreadableItem, match="ended without yielding anything"):
        list(texts(iter([]), cancel=CancelToken()))
