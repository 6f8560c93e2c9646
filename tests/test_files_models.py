"""Attached files reaching real models: the embedded SmolLM2 (LlamaSource and ChatLlama in an LCEL chain) reads
a text file and is told in-band that it cannot see the image; a document longer than its context is cut and the
answer says how much was read; llama-cpp-python's OpenAI-compatible server gets the file as text and the image
as an `image_url` part (the request body as ChatOpenAI sent it, recorded on the wire), and since its text model
cannot read it, the chat says so with the server's words (kit.adapters.server_errors), never an empty reply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from kit import ChatLlama, LlamaSource, create_app
from kit.adapters.ready_made import openai_chat_model
from kit.adapters.server_errors import EMPTY_STREAM
from kit.model.source import to_llama_messages
from kit.pipeline.files import CANNOT_SEE, data_url
from kit.serving.client import stream_chat
from tests.compat import llama_server_url, stop_llama_server
from tests.documents import PNG, SECRET, TEXT_FILES, pdf
from tests.test_files import QUESTION, post

FILES = [("secret.txt", SECRET.encode(), "text/plain"), ("photo.png", PNG, "image/png")]


@pytest.fixture(scope="module", autouse=True)
def _llama_server() -> Iterator[None]:
    yield
    stop_llama_server()


def test_the_embedded_model_reads_the_file_and_is_told_it_cannot_see_the_image(serve) -> None:  # type: ignore[no-untyped-def]
    source = LlamaSource(temperature=0, max_tokens=24)
    seen: list[Any] = []

    def recorded(messages: list[dict[str, Any]], cancel: Any) -> Any:
        seen.append(to_llama_messages(messages))
        return source(messages, cancel)

    server = serve(create_app(recorded, thread_store=False))
    response = post(server.url, FILES, timeout=300)
    assert response.status_code == 200, response.text
    prompt = seen[-1][-1]["content"]
    assert prompt.startswith(QUESTION)
    assert f'<file name="secret.txt" type="text/plain">\n{SECRET}\n</file>' in prompt
    assert f"Attached image: photo.png\n{CANNOT_SEE}" in prompt
    assert "PAPAYA" in response.json()["text"]


def test_chat_llama_in_a_chain_reads_the_file(serve) -> None:  # type: ignore[no-untyped-def]
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), MessagesPlaceholder("messages")])
    chain = prompt | ChatLlama(temperature=0, max_tokens=24)
    server = serve(create_app(chain, thread_store=False))
    response = post(server.url, FILES[:1], timeout=300)
    assert response.status_code == 200, response.text
    assert "PAPAYA" in response.json()["text"]


def test_a_document_longer_than_the_context_is_cut_and_the_answer_says_how_much_was_read(serve) -> None:  # type: ignore[no-untyped-def]
    source = LlamaSource(n_ctx=512, temperature=0, max_tokens=8)
    long_text = SECRET + " " + " ".join(f"Line {n}: the quick brown fox jumps over the lazy dog." for n in range(400))
    server = serve(create_app(source, thread_store=False))
    response = post(server.url, [("long.txt", long_text.encode(), "text/plain")], timeout=300)
    assert response.status_code == 200, response.text
    text = response.json()["text"]
    assert (
        text.startswith("_(Read the first ") and " tokens of long.txt: the model's context holds 512 tokens.)_" in text
    )
    used, total = (
        int(n.replace(",", "")) for n in text.split("_(Read the first ")[1].split(" tokens")[0].split(" of ")
    )
    assert 200 < used < 512 < total


def test_an_openai_compatible_server_gets_the_file_as_text_and_the_image_as_an_image_url_part(serve) -> None:  # type: ignore[no-untyped-def]
    bodies: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))

    with httpx.Client(event_hooks={"request": [record]}, timeout=300) as client:  # closed: no socket left open
        model = openai_chat_model(llama_server_url(), temperature=0, max_tokens=16, http_client=client)
        server = serve(create_app(model, thread_store=False))
        # Every text type and a PDF: one string, each file a named section (the server's text template takes no list).
        texts = [(name, data, declared) for name, declared, data, _ in TEXT_FILES] + [
            ("doc.pdf", pdf([SECRET]), "application/pdf")
        ]
        response = post(server.url, texts, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["text"].strip()
        (user,) = [m for m in bodies[-1]["messages"] if m["role"] == "user"]
        sections = [
            f'<file name="{name}" type="{ {"code.py": "text/x-python"}.get(name, declared) }">\n{content}\n</file>'
            for name, declared, _, content in TEXT_FILES
        ]
        sections.append(f'<file name="doc.pdf" type="application/pdf">\n[page 1]\n{SECRET}\n</file>')
        assert user["content"] == "\n\n".join([QUESTION, *sections])

        # With the image: an image_url part with the data URL. llama-cpp-python's server without a vision model (a
        # clip projector) cannot render list content with SmolLM2's chat template: a streamed request gets a 200
        # and an empty stream (the template's TypeError is only in its log). The chat says the model cannot see
        # the image: a 415 on POST /chat, an in-band error on the stream, never the generic 500 or silence.
        response = post(server.url, FILES, timeout=300)
        (user,) = [m for m in bodies[-1]["messages"] if m["role"] == "user"]
        assert user["content"][1:] == [
            {"type": "text", "text": f'<file name="secret.txt" type="text/plain">\n{SECRET}\n</file>'},
            {"type": "text", "text": "Attached image: photo.png"},
            {"type": "image_url", "image_url": {"url": data_url({"type": "image/png", "content": PNG})}},
        ]
        cannot_see = "The model could not read the attached image (photo.png): it seems unable to see images."
        assert response.status_code == 415 and response.json()["error"].startswith(cannot_see), response.text
        reply = stream_chat(server.url + "chat-stream", QUESTION, files=FILES, timeout=300)
        assert reply.status == 200 and reply.text == ""
        assert len(reply.errors) == 1 and reply.errors[0].startswith(cannot_see) and EMPTY_STREAM in reply.errors[0]


def test_llama_cpp_pythons_refusal_of_an_image_part_surfaces_with_its_words(serve) -> None:  # type: ignore[no-untyped-def]
    # Not streamed, the server refuses with a 500 and its error body (the template's TypeError).
    with httpx.Client(timeout=300) as client:
        model = openai_chat_model(
            llama_server_url(), max_tokens=8, http_client=client, max_retries=0, disable_streaming=True
        )
        server = serve(create_app(model, thread_store=False))
        response = post(server.url, FILES[1:], timeout=300)
    assert response.status_code == 415, response.text
    assert (
        'The model server answered HTTP 500: can only concatenate str (not "list") to str' in response.json()["error"]
    )
