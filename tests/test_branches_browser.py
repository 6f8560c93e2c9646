"""Branches in Debian's chromium, on the kit's own page and the real Deep Chat bundle: a six-turn chat, an edit of
turn 3 (the source gets exactly turns 1-2 and the edited turn), the old turns behind the switcher after a reload
and in a second tab, two regenerations and a switch back to the first answer, feedback that is one row per
answer and shows again after a reload; restored bubbles that look as they did live."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kit import create_app
from kit.testing.browser import chromium_page
from kit.testing.fakes import EchoSource
from kit.threads.feedback import FeedbackStore
from kit.threads.store import PostgresThreadStore, ThreadStore
from tests.helpers import wait_until
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)
from tests.test_branches_web import store  # noqa: F401  (SQLite and PostgreSQL)
from tests.test_browser import send
from tests.test_threads_browser import bubbles

Pairs = list[tuple[str, str]]


def branch(page: Any) -> list[dict[str, Any]]:
    """The current branch as the page holds it (the server's messages with their ids, versions, feedback)."""
    return page.evaluate("window.kitThread.branch")


def refreshed(page: Any) -> int:
    return page.evaluate("window.kitBranches ? window.kitBranches.refreshed : 0")


def settled(page: Any, count: int, before: int) -> None:
    """Waits until the page has learnt the branch after a reply (or a switch) and drawn its `count` bubbles."""
    assert wait_until(lambda: refreshed(page) > before and len(branch(page)) == count, timeout=20), branch(page)
    assert wait_until(lambda: page.locator(".kit-controls").count() == count, timeout=10), bubbles(page)


def opened(page: Any, url: str, count: int) -> None:
    """Opens (or reloads) the chat and waits for its `count` restored bubbles and their buttons."""
    page.goto(url)
    assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == count, timeout=15)
    assert wait_until(lambda: page.locator(".kit-controls").count() == count, timeout=10), bubbles(page)


def click(page: Any, message_id: str, control: str) -> None:
    """Clicks a control under the bubble of that message (addressed by its id, as the page does)."""
    page.locator(f".outer-message-container[data-kit-id='{message_id}'] {control}").click()


def pairs(messages: list[dict[str, Any]]) -> Pairs:
    return [(message["role"], message["text"]) for message in messages]


def chat(page: Any, text: str) -> None:
    before, count = refreshed(page), len(branch(page))
    send(page, text)
    settled(page, count + 2, before)


def edit(page: Any, message_id: str, text: str, count: int) -> None:
    before = refreshed(page)
    click(page, message_id, ".kit-edit-message")
    page.locator(".kit-edit-text").fill(text)
    page.locator(".kit-edit-send").click()
    settled(page, count, before)


def act(page: Any, message_id: str, control: str, count: int) -> None:
    before = refreshed(page)
    click(page, message_id, control)
    settled(page, count, before)


def turns(count: int) -> Pairs:
    """The echo source's answers to q1..qN asked in one go on a fresh thread."""
    out: Pairs = []
    for n in range(1, count + 1):
        out += [("user", f"q{n}"), ("ai", f"answer {n} to q{n}")]
    return out


def versions(message: dict[str, Any]) -> tuple[int, int] | None:
    found = message.get("versions")
    return (found["index"], found["count"]) if found else None


def branches_scenario(
    url: str,
    source: EchoSource,
    threads: ThreadStore,
    moved: Callable[[], object] = lambda: None,
) -> None:
    """The whole story in one browser: six turns, an edit, reloads, a second tab, regenerations, feedback.
    `moved` runs before each reload and second tab (two workers: the next requests reach the other one)."""

    def reopened(page: Any, url: str, count: int) -> None:
        moved()
        opened(page, url, count)

    with chromium_page() as page:
        opened(page, url, 0)
        for n in range(1, 7):
            chat(page, f"q{n}")
        original = branch(page)
        assert pairs(original) == turns(6) == [tuple(pair) for pair in bubbles(page)]
        ids = [message["id"] for message in original]
        assert len(set(ids)) == 12 and all(isinstance(i, str) and i for i in ids)

        # Edit turn 3: the source gets exactly turns 1-2 and the edited turn 3.
        edit(page, ids[4], "q3, asked again", 6)
        assert pairs(source.received[-1]) == [*turns(2), ("user", "q3, asked again")]
        edited = branch(page)
        assert pairs(edited) == [*turns(2), ("user", "q3, asked again"), ("ai", "answer 7 to q3, asked again")]
        assert [m["id"] for m in edited[:4]] == ids[:4] and versions(edited[4]) == (2, 2)
        assert page.locator(f"[data-kit-id='{edited[4]['id']}'] .kit-version").inner_text() == "2 / 2"

        # A reload: the same bubbles and ids; the old turns 3-6 are behind the switcher.
        reopened(page, url, 6)
        assert branch(page) == edited and pairs(edited) == [tuple(pair) for pair in bubbles(page)]
        act(page, edited[4]["id"], ".kit-previous", 12)
        assert branch(page) == [
            *original[:4],
            {**original[4], "versions": {"index": 1, "count": 2, "ids": [ids[4], edited[4]["id"]]}},
            *original[5:],
        ]
        assert pairs(branch(page)) == [tuple(pair) for pair in bubbles(page)]

        # A second tab sees the switched branch and switches it back; the first, reloaded, follows.
        second = page.context.new_page()
        reopened(second, url, 12)
        assert branch(second) == branch(page)
        act(second, ids[4], ".kit-next", 6)
        assert branch(second) == edited
        second.close()
        reopened(page, url, 6)
        assert branch(page) == edited

        # Regenerate twice; the source gets the branch up to the question; then back to the first answer.
        answer = edited[5]["id"]
        act(page, answer, ".kit-regenerate", 6)
        assert pairs(source.received[-1]) == [*turns(2), ("user", "q3, asked again")]
        act(page, branch(page)[5]["id"], ".kit-regenerate", 6)
        third = branch(page)[5]
        assert third["text"] == "answer 9 to q3, asked again" and versions(third) == (3, 3)
        act(page, third["id"], ".kit-previous", 6)
        act(page, branch(page)[5]["id"], ".kit-previous", 6)
        assert branch(page)[5]["id"] == answer and versions(branch(page)[5]) == (1, 3)
        assert bubbles(page)[-1] == ("ai", "answer 7 to q3, asked again")

        # Feedback after a reload, on the old branch's answer to q4 (message 7, counting from 0): one row, a
        # second click changes it, a comment; the vote and comment show after another reload.
        act(page, edited[4]["id"], ".kit-previous", 12)
        reopened(page, url, 12)
        thread_id = page.evaluate("window.kitThread.id()")

        def feedback_rows() -> list[dict[str, Any]]:
            return [row for row in FeedbackStore(threads).export() if row["thread_id"] == thread_id]

        voted = branch(page)[7]
        assert voted["id"] == ids[7] and voted["role"] == "ai"
        click(page, voted["id"], ".kit-vote-up")
        assert wait_until(lambda: [row["vote"] for row in feedback_rows()] == ["up"])
        click(page, voted["id"], ".kit-vote-down")
        assert wait_until(lambda: [row["vote"] for row in feedback_rows()] == ["down"])
        click(page, voted["id"], ".kit-comment-open")
        page.locator(".kit-comment-text").fill("too short")
        page.locator(".kit-comment-save").click()
        assert wait_until(lambda: [(r["vote"], r["comment"]) for r in feedback_rows()] == [("down", "too short")])
        [row] = feedback_rows()
        assert (row["message_id"], row["question"], row["answer"]) == (ids[7], "q4", "answer 4 to q4")
        reopened(page, url, 12)
        shown = page.locator(f"[data-kit-id='{voted['id']}'] .kit-controls")
        assert shown.locator(".kit-vote-down").get_attribute("aria-pressed") == "true"
        assert shown.locator(".kit-vote-up").get_attribute("aria-pressed") == "false"
        assert shown.locator(".kit-comment").inner_text() == "too short"
        assert branch(page)[7]["feedback"] == {"vote": "down", "comment": "too short"}
        click(page, voted["id"], ".kit-vote-down")  # the chosen thumb again: the vote is removed
        assert wait_until(lambda: feedback_rows() == [])
        assert wait_until(lambda: shown.locator(".kit-vote-down").get_attribute("aria-pressed") == "false")


def test_edit_switch_regenerate_and_feedback_on_a_transcript(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    source = EchoSource()
    server = serve(create_app(source, thread_store=store))
    branches_scenario(server.url, source, store)


class EchoGraph:
    """A checkpointed graph whose model node answers as EchoSource does, recording the branch it was given (the
    checkpoint's messages: a graph is fed only the new message, its checkpoint holds the rest)."""

    def __init__(self, saver: Any) -> None:
        from langgraph.graph import START, MessagesState, StateGraph

        self.received: list[list[dict[str, str]]] = []
        graph = StateGraph(MessagesState)
        graph.add_node("answer", self._answer)
        graph.add_edge(START, "answer")
        self.graph = graph.compile(checkpointer=saver)

    def _answer(self, state: Any) -> dict[str, list[Any]]:
        from langchain_core.messages import AIMessage

        messages = state["messages"]
        self.received.append([{"role": "user" if m.type == "human" else "ai", "text": m.text} for m in messages])
        return {"messages": [AIMessage(f"answer {len(self.received)} to {messages[-1].text}")]}


def test_the_same_on_a_checkpointed_graph(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from kit.adapters.graphs import graph_source

    graph = EchoGraph(store.checkpointer())
    server = serve(create_app(graph_source(graph.graph), thread_store=store))
    branches_scenario(server.url, graph, store)  # type: ignore[arg-type]


class SharedEcho:
    """EchoSource across worker processes: what each run received is a line of a JSON file, runs are numbered
    across all of them (the scenario's requests come one at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, messages: list[dict[str, Any]], cancel: object) -> Iterator[str]:
        with self.path.open("a") as out:
            out.write(json.dumps([{"role": m["role"], "text": m.get("text", "")} for m in messages]) + "\n")
        return iter([f"answer {len(self.received)}", f" to {messages[-1].get('text', '')}"])

    @property
    def received(self) -> list[list[dict[str, Any]]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


def shared_echo_app(postgres_url: str, path: str) -> Any:
    """gunicorn factory: the shared echo source on threads in PostgreSQL; each response names its worker."""
    from tests.prod_server import named_by_worker

    return named_by_worker(create_app(SharedEcho(path), thread_store=PostgresThreadStore(postgres_url)))


def test_the_same_across_two_gunicorn_workers(postgres_cluster: PostgresCluster, tmp_path: Path) -> None:  # noqa: F811
    from tests.rejoin_prod import TwoWorkers

    runs = tmp_path / "runs.jsonl"
    app = f"tests.test_branches_browser:shared_echo_app({postgres_cluster.url!r}, {str(runs)!r})"
    shared = PostgresThreadStore(postgres_cluster.url)
    with TwoWorkers(postgres_cluster.url, app=app) as two:
        # Every reload and second tab reaches the other worker than the requests before it.
        branches_scenario(two.url, SharedEcho(runs), shared, moved=two.switch)  # type: ignore[arg-type]
    shared.close()
