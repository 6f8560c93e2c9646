"""Files in the chat: Deep Chat's multipart body (`files` plus `message1..N`) on a real server on loopback, every
accepted type through a plain function, an LCEL chain and a LangGraph graph (what arrives asserted, content
included), and hostile or unreadable files refused with a 4xx naming them before the source is called."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from kit import create_app
from kit.adapters.graphs import graph_source
from kit.pipeline.files import CANNOT_SEE, data_url
from kit.pipeline.sources import Message
from kit.serving.client import multipart_body
from tests.documents import JPEG, PNG, SECRET, TEXT_FILES, pdf, wav, zip_bomb

QUESTION = "What is the secret word in the file?"
Upload = tuple[str, str, bytes]


def post(
    url: str,
    uploads: list[Upload],
    text: str = QUESTION,
    earlier: Sequence[Message] = (),
    timeout: float = 30,
    **headers: str,
) -> httpx.Response:
    """A request as Deep Chat 2.4.2 sends one with attachments (kit.serving.client.multipart_body)."""
    messages = [*earlier, {"role": "user", "text": text}]
    body = multipart_body(messages, uploads)
    return httpx.post(f"{url}/chat", **body, headers=headers, timeout=timeout)


class Recorder:
    """A plain function source that keeps the messages it was called with."""

    def __init__(self) -> None:
        self.calls: list[list[Message]] = []

    def __call__(self, messages: list[Message]) -> list[str]:
        self.calls.append(messages)
        return ["ok"]


@pytest.fixture
def recorded(serve):  # type: ignore[no-untyped-def]
    recorder = Recorder()
    server = serve(create_app(recorder, thread_store=False))
    return recorder, server.url


ACCEPTED: list[tuple[str, str, bytes, str, Any]] = [
    *[(name, declared, data, "text", content) for name, declared, data, content in TEXT_FILES],
    ("doc.pdf", "application/pdf", pdf([SECRET, "Page two."]), "pdf", f"[page 1]\n{SECRET}\n\n[page 2]\nPage two."),
    ("photo.png", "image/png", PNG, "image", PNG),
    ("photo.jpg", "image/jpeg", JPEG, "image", JPEG),
    ("voice.wav", "audio/wav", wav(), "audio", wav()),
]


@pytest.mark.parametrize(("name", "declared", "data", "kind", "content"), ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_every_accepted_type_reaches_a_plain_function_with_its_content(
    recorded, name, declared, data, kind, content
) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    response = post(url, [(name, data, declared)])
    assert response.status_code == 200, response.text
    (last,) = recorder.calls[-1]
    assert last["text"] == QUESTION
    (attachment,) = last["files"]
    assert attachment["name"] == name and attachment["kind"] == kind and attachment["size"] == len(data)
    assert attachment["content"] == content
    assert len(attachment["sha256"]) == 64


def test_files_without_text_and_after_earlier_turns(recorded) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    earlier = [{"role": "user", "text": "Hi"}, {"role": "ai", "text": "Hello"}]
    response = post(url, [("secret.txt", SECRET.encode(), "text/plain")], text="", earlier=earlier)
    assert response.status_code == 200, response.text
    messages = recorder.calls[-1]
    assert [(m["role"], m["text"]) for m in messages] == [("user", "Hi"), ("ai", "Hello"), ("user", "")]
    assert messages[-1]["files"][0]["content"] == SECRET


def test_a_follow_up_carries_the_earlier_image_again_and_names_the_earlier_text_file(recorded) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    image = {"src": data_url({"type": "image/png", "content": PNG}), "name": "p.png", "type": "image"}
    earlier = [{"role": "user", "text": QUESTION, "files": [{"name": "s.txt", "type": "any", "ref": {}}, image]}]
    body = {"messages": [*earlier, {"role": "ai", "text": "PAPAYA"}, {"role": "user", "text": "And the picture?"}]}
    assert httpx.post(f"{url}/chat", json=body, timeout=30).status_code == 200
    first = recorder.calls[-1][0]["files"]
    assert [(f["name"], f["kind"]) for f in first] == [("s.txt", "earlier"), ("p.png", "image")]
    assert first[1]["content"] == PNG


def test_an_lcel_chain_gets_content_blocks_each_file_named(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[BaseMessage]] = []

    def answer(prompt: Any) -> str:
        seen.append(prompt.to_messages())
        return "ok"

    prompt = ChatPromptTemplate.from_messages([("system", "Answer from the files."), MessagesPlaceholder("messages")])
    chain = prompt | RunnableLambda(answer)
    server = serve(create_app(chain, thread_store=False))
    uploads = [(n, d, t) for n, t, d, _ in TEXT_FILES[:1]] + [("doc.pdf", pdf([SECRET]), "application/pdf")]
    uploads += [("photo.png", PNG, "image/png"), ("voice.wav", wav(), "audio/wav")]
    assert post(server.url, uploads).status_code == 200
    human = seen[-1][-1]
    assert isinstance(human, HumanMessage)
    blocks = human.content
    assert blocks[0] == {"type": "text", "text": QUESTION}
    assert blocks[1] == {"type": "text", "text": f'<file name="secret.txt" type="text/plain">\n{SECRET}\n</file>'}
    assert blocks[2] == {
        "type": "text",
        "text": f'<file name="doc.pdf" type="application/pdf">\n[page 1]\n{SECRET}\n</file>',
    }
    assert blocks[3:5] == [
        {"type": "text", "text": "Attached image: photo.png"},
        {"type": "image_url", "image_url": {"url": data_url({"type": "image/png", "content": PNG})}},
    ]
    assert blocks[5]["text"] == "Attached recording: voice.wav"
    assert blocks[6]["type"] == "audio" and blocks[6]["mime_type"] == "audio/wav"


def test_text_files_alone_reach_a_chain_as_one_string_with_named_sections(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[BaseMessage]] = []
    chain = ChatPromptTemplate.from_messages([MessagesPlaceholder("messages")]) | RunnableLambda(
        lambda value: seen.append(value.to_messages()) or "ok"
    )
    server = serve(create_app(chain, thread_store=False))
    assert (
        post(server.url, [("secret.txt", SECRET.encode(), "text/plain"), ("b.md", b"# B", "text/markdown")]).status_code
        == 200
    )
    assert seen[-1][-1].content == (
        f'{QUESTION}\n\n<file name="secret.txt" type="text/plain">\n{SECRET}\n</file>\n\n'
        '<file name="b.md" type="text/markdown">\n# B\n</file>'
    )


def test_a_chain_over_a_question_string_reads_the_files_as_text(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[dict[str, Any]] = []
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = prompt | RunnableLambda(lambda value: seen.append(value.to_messages()) or "ok")
    server = serve(create_app(chain, thread_store=False))
    assert (
        post(server.url, [("secret.txt", SECRET.encode(), "text/plain"), ("p.png", PNG, "image/png")]).status_code
        == 200
    )
    text = seen[-1][-1].content
    assert SECRET in text and 'name="secret.txt"' in text and CANNOT_SEE in text


def test_a_checkpointed_graph_gets_and_keeps_the_files_in_its_messages(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def node(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [AIMessage(f"I got {len(state['messages'][-1].content)} blocks")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    compiled = graph.compile(checkpointer=InMemorySaver())
    server = serve(create_app(graph_source(compiled), thread_store=tmp_path / "t.sqlite"))
    thread = "0123456789abcdef0123"
    response = post(
        server.url,
        [("secret.txt", SECRET.encode(), "text/plain"), ("p.png", PNG, "image/png")],
        **{"X-Kit-Thread-Id": thread},
    )
    assert response.json() == {"text": "I got 4 blocks"}
    kept = compiled.get_state({"configurable": {"thread_id": thread}}).values["messages"]
    assert SECRET in kept[0].content[1]["text"] and kept[0].content[3]["type"] == "image_url"


# -- bad and hostile files --------------------------------------------------------------------------------------

REFUSED = [
    ("empty.txt", "text/plain", b"", 400, "empty.txt is empty"),
    ("binary.txt", "text/plain", bytes(range(256)) * 4, 400, "binary.txt is not UTF-8 text"),
    ("nul.txt", "text/plain", b"abc\x00def", 400, "nul.txt holds binary data"),
    ("latin.txt", "text/plain", "café".encode("latin-1"), 400, "latin.txt is not UTF-8 text"),
    ("broken.pdf", "application/pdf", b"%PDF-1.4\nthis is not a pdf at all", 400, "broken.pdf cannot be read as a PDF"),
    ("fake.png", "image/png", b"plain text, not an image", 400, "fake.png says it is image/png"),
    ("bomb.zip", "application/zip", zip_bomb(), 415, "bomb.zip is application/zip"),
    ("bomb.txt", "text/plain", zip_bomb(), 415, "bomb.txt is application/zip"),
    ("big.txt", "text/plain", b"a" * (2 * 1024 * 1024 + 1), 413, "big.txt holds 2,097,153 bytes"),
]


@pytest.mark.parametrize(("name", "declared", "data", "status", "message"), REFUSED, ids=[row[0] for row in REFUSED])
def test_unreadable_and_hostile_files_are_a_4xx_naming_them_before_the_source_runs(
    recorded, name, declared, data, status, message
) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    response = post(url, [("ok.txt", b"fine", "text/plain"), (name, data, declared)])
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    assert recorder.calls == []
    assert post(url, [("ok.txt", b"fine", "text/plain")]).status_code == 200  # the server is still up


def test_a_markup_name_with_path_separators_is_cut_to_a_plain_name_and_nothing_is_written(
    recorded, monkeypatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    big = b"PAPAYA " * 200_000  # 1.4 MB: werkzeug would spool a part this size to a temporary file
    response = post(url, [("../../etc/<img src=x onerror=alert(1)>.txt", big, "text/plain")])
    assert response.status_code == 200, response.text
    assert recorder.calls[-1][-1]["files"][0]["name"] == "_img src=x onerror=alert(1)_.txt"
    assert list(spool.iterdir()) == [] and list(work.iterdir()) == []


def test_a_pdf_of_thousands_of_pages_is_read_to_its_limit(recorded) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    response = post(url, [("long.pdf", pdf([f"page {n}" for n in range(1, 3001)]), "application/pdf")])
    assert response.status_code == 200, response.text
    attachment = recorder.calls[-1][-1]["files"][0]
    assert (attachment["pages"], attachment["pages_read"]) == (3000, 200)
    assert attachment["content"].endswith("[pages 201 to 3000 were not read: the chat reads at most 200 pages]")


def test_wrong_content_types_follow_the_bytes(recorded) -> None:  # type: ignore[no-untyped-def]
    recorder, url = recorded
    response = post(url, [("p.txt", PNG, "text/plain"), ("notes", b"# hi", "application/octet-stream")])
    assert response.status_code == 200, response.text
    image, text = recorder.calls[-1][-1]["files"]
    assert (image["kind"], image["type"]) == ("image", "image/png")
    assert (text["kind"], text["type"], text["content"]) == ("text", "text/plain", "# hi")


def test_limits_and_the_type_allow_list_are_settings(serve) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    app = create_app(recorder, thread_store=False, max_file_bytes=100, max_files_bytes=150, file_types=["text/plain"])
    url = serve(app).url
    assert post(url, [("a.txt", b"x" * 101, "text/plain")]).status_code == 413
    response = post(url, [("a.txt", b"x" * 80, "text/plain"), ("b.txt", b"y" * 80, "text/plain")])
    assert response.status_code == 413 and "160 bytes" in response.json()["error"]
    response = post(url, [("p.png", PNG, "image/png")])
    assert response.status_code == 415 and "p.png is image/png" in response.json()["error"]
    assert post(url, [("a.txt", b"x" * 80, "text/plain")]).status_code == 200
    with pytest.raises(ValueError, match="max_file_bytes"):
        create_app(recorder, max_file_bytes=0)


def recording_graph(seen: list[list[BaseMessage]]) -> Any:
    def node(state: MessagesState) -> dict[str, list[BaseMessage]]:
        seen.append(list(state["messages"]))
        return {"messages": [AIMessage("ok")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def expected_content(name: str, declared: str, kind: str, content: Any) -> Any:
    """What a chain's HumanMessage holds for the question with this one file attached."""
    if kind in ("text", "pdf"):
        media_type = {"code.py": "text/x-python"}.get(name, declared)
        return f'{QUESTION}\n\n<file name="{name}" type="{media_type}">\n{content}\n</file>'
    label = {"type": "text", "text": f"Attached {'image' if kind == 'image' else 'recording'}: {name}"}
    url = data_url({"type": declared, "content": content})
    if kind == "image":
        return [{"type": "text", "text": QUESTION}, label, {"type": "image_url", "image_url": {"url": url}}]
    return [
        {"type": "text", "text": QUESTION},
        label,
        {"type": "audio", "base64": url.split(",")[1], "mime_type": declared},
    ]


@pytest.mark.parametrize("kind_of_source", ["chain", "graph"])
@pytest.mark.parametrize(("name", "declared", "data", "kind", "content"), ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_every_accepted_type_reaches_a_chain_and_a_graph(
    serve, kind_of_source, name, declared, data, kind, content
) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[BaseMessage]] = []
    if kind_of_source == "chain":
        record = RunnableLambda(lambda value: seen.append(value.to_messages()) or "ok")
        source: Any = ChatPromptTemplate.from_messages([MessagesPlaceholder("messages")]) | record
    else:
        source = recording_graph(seen)
    server = serve(create_app(source, thread_store=False))
    assert post(server.url, [(name, data, declared)]).status_code == 200
    (human,) = seen[-1]
    assert isinstance(human, HumanMessage)
    assert human.content == expected_content(name, declared, kind, content)
