"""Images reaching a vision model, and a model server's failure told in the chat.

No vision model runs on this machine, so a scripted fake OpenAI-compatible vision server (tests.fake_vision_server)
stands in: LangChain's own ChatOpenAI and the kit's `openai_chat_model`, each alone and in a LangGraph graph, send
it the attached PNG and JPEG as `image_url` parts with base64 data URLs; the bytes it decodes equal the ones
attached, and its streamed answer (naming each image's SHA-256) reaches Deep Chat on both routes. A server that
refuses, or answers an empty stream, is a clear error with the server's words: a 415 saying that the model cannot
read the image when one was attached, never the kit's generic 500 or an empty reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI

from kit import LlamaSource, create_app
from kit.adapters.ready_made import openai_chat_model
from kit.adapters.server_errors import EMPTY_STREAM
from kit.model.remote import CUT
from kit.pipeline.files import data_url
from kit.serving.client import chat_body, stream_chat
from kit.serving.server import BackgroundServer
from tests.compat import one_node_graph
from tests.documents import JPEG, PNG, SECRET
from tests.fake_vision_server import FakeVisionServer, described, fake_vision_app
from tests.test_files import QUESTION, post

IMAGES = [("photo.png", PNG, "image/png"), ("scan.jpg", JPEG, "image/jpeg")]
REFUSAL = "image input is not supported by this model"


@pytest.fixture
def fake(serve) -> Iterator[tuple[FakeVisionServer, str]]:  # type: ignore[no-untyped-def]
    """The fake vision server on loopback and its API's URL."""
    vision = FakeVisionServer()
    yield vision, serve(fake_vision_app(vision)).url + "v1"


def chat_openai(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="not-needed", model="fake-vision", max_retries=0)  # type: ignore[arg-type]


MODELS: dict[str, Callable[[str], Any]] = {
    "ChatOpenAI": chat_openai,
    "openai_chat_model": lambda url: openai_chat_model(url, model="fake-vision", max_retries=0),
    "graph(ChatOpenAI)": lambda url: one_node_graph(chat_openai(url)),
}


def ask(server: BackgroundServer, route: str, uploads: list[tuple[str, bytes, str]]) -> tuple[int, str, str]:
    """(status, answer, error) of one question with `uploads` attached, on POST /chat or POST /chat-stream."""
    if route == "chat":
        response = post(server.url, uploads) if uploads else httpx.post(server.url + "chat", json=chat_body(QUESTION))
        body = response.json()
        return response.status_code, body.get("text", ""), body.get("error", "")
    reply = stream_chat(server.url + "chat-stream", QUESTION, files=uploads)
    return reply.status, reply.text, " ".join(reply.errors)


@pytest.mark.parametrize("route", ["chat", "chat-stream"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_images_reach_a_vision_server_intact_as_image_url_parts(serve, fake, model: str, route: str) -> None:  # type: ignore[no-untyped-def]
    vision, url = fake
    server = serve(create_app(MODELS[model](url), thread_store=False))
    status, answer, error = ask(server, route, [("secret.txt", SECRET.encode(), "text/plain"), *IMAGES])
    assert (status, error) == (200, "")
    assert answer == " ".join(described(media_type, data) for _, data, media_type in IMAGES)
    assert vision.images == [(media_type, data) for _, data, media_type in IMAGES]  # bytes equal after decoding
    (user,) = [m for m in vision.bodies[-1]["messages"] if m["role"] == "user"]
    assert user["content"] == [
        {"type": "text", "text": QUESTION},
        {"type": "text", "text": f'<file name="secret.txt" type="text/plain">\n{SECRET}\n</file>'},
        {"type": "text", "text": "Attached image: photo.png"},
        {"type": "image_url", "image_url": {"url": data_url({"type": "image/png", "content": PNG})}},
        {"type": "text", "text": "Attached image: scan.jpg"},
        {"type": "image_url", "image_url": {"url": data_url({"type": "image/jpeg", "content": JPEG})}},
    ]


@pytest.mark.parametrize("route", ["chat", "chat-stream"])
def test_a_refused_image_is_a_415_saying_the_model_cannot_see_it_with_the_servers_words(
    serve, fake, route: str
) -> None:  # type: ignore[no-untyped-def]
    vision, url = fake
    vision.refuse = (400, {"error": {"message": REFUSAL, "type": "invalid_request_error"}})
    server = serve(create_app(openai_chat_model(url, max_retries=0), thread_store=False))
    status, answer, error = ask(server, route, IMAGES[:1])
    assert (status, answer) == ((415, "") if route == "chat" else (200, ""))
    assert error.startswith("The model could not read the attached image (photo.png): it seems unable to see images.")
    assert f"The model server answered HTTP 400: {REFUSAL}" in error


@pytest.mark.parametrize("route", ["chat", "chat-stream"])
def test_an_empty_stream_is_an_error_not_an_empty_reply(serve, fake, route: str) -> None:  # type: ignore[no-untyped-def]
    vision, url = fake
    vision.empty = True
    server = serve(create_app(chat_openai(url), thread_store=False))
    status, answer, error = ask(server, route, [])
    assert (status, answer, error) == ((502, "", EMPTY_STREAM) if route == "chat" else (200, "", EMPTY_STREAM))
    status, _, error = ask(server, route, IMAGES)
    assert status == (415 if route == "chat" else 200)
    assert (
        error.startswith("The model could not read the attached images (photo.png, scan.jpg)") and EMPTY_STREAM in error
    )


def test_a_server_error_without_images_is_a_502_with_the_servers_message(serve, fake) -> None:  # type: ignore[no-untyped-def]
    vision, url = fake
    vision.refuse = (500, {"error": {"message": "the model crashed", "type": "internal_server_error"}})
    server = serve(create_app(chat_openai(url), thread_store=False))
    assert ask(server, "chat", []) == (502, "", "The model server answered HTTP 500: the model crashed")


def test_the_kits_remote_engine_calls_an_empty_stream_cut(serve, fake) -> None:  # type: ignore[no-untyped-def]
    vision, url = fake
    vision.empty = True
    server = serve(create_app(LlamaSource(engine_url=url), thread_store=False))
    assert ask(server, "chat", []) == (502, "", CUT)
    assert ask(server, "chat-stream", [])[1:] == ("", CUT)
