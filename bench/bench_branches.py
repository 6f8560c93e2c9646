"""Branches: a switch between two branches of a 50-message thread in chromium (SQLite and PostgreSQL), and a
regenerated turn 10 on the embedded model (time to first text and the prompt tokens the engine read).

- Switch: a thread of 50 messages (25 turns), its first question edited and 24 more turns asked on the new
  branch, so both branches hold 50 messages and differ from the first bubble on. The kit's page in chromium
  shows one; from the click on the previous (or next) version under the first bubble to every bubble of the
  other branch on screen with its buttons: the switch route, Deep Chat drawing the 50 bubbles as its history,
  the page's buttons.
- Regenerate: ten turns with LlamaSource (greedy, short answers) as the kit's page sends them, on a thread; then
  `{"kit": {"regenerate": <turn 10's answer>}}`. Time to first text and the prompt tokens the engine read
  (`engine.reuse`), against the fresh turn 10 itself and against the whole turn-10 prompt read from nothing.

    python -m bench.bench_branches [--runs 3] [--postgres auto|postgresql://...] [--json out.json]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.measure import summary
from bench.store_figures import describe_medians, main, on_each_store
from kit import create_app
from kit.serving.client import Received, chat_body, iter_stream
from kit.serving.server import BackgroundServer
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.store import SqliteThreadStore, ThreadStore

MAX_TOKENS = 16


def _reply(url: str, thread_id: str, body: dict[str, Any]) -> tuple[float, str]:
    """One streamed turn: its time to first text and its text."""
    asked, first, text = time.perf_counter(), float("nan"), ""
    for item in iter_stream(url + "chat-stream", body, headers={THREAD_ID_HEADER: thread_id}, timeout=300):
        if isinstance(item, Received) and item.payload and item.payload.get("text"):
            first = time.perf_counter() - asked if not text else first
            text += item.payload["text"]
    return first, text


def _messages(url: str, thread_id: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}threads/{thread_id}/messages", timeout=30).json()


def _turns(url: str, thread_id: str, questions: list[str], history: list[dict[str, str]]) -> list[float]:
    """Turns as the kit's page sends them (the visible history each time); their times to first text."""
    times = []
    for question in questions:
        first, text = _reply(url, thread_id, chat_body(question, history))
        history += [{"role": "user", "text": question}, {"role": "ai", "text": text}]
        times.append(first)
    return times


# -- switch ----------------------------------------------------------------------------------------------

# Clicks the switcher under the first bubble and waits (one animation frame at a time) until every bubble of the
# other branch is on screen with its buttons; the milliseconds in between. Run in the page: its CSP allows no eval.
_SWITCH = """async ([control, wanted, firstText]) => {
  const root = document.getElementById('chat').shadowRoot;
  const done = () => {
    const rows = root.querySelectorAll('.outer-message-container:not(.deep-chat-intro)');
    return rows.length === wanted && root.querySelectorAll('.kit-controls').length === wanted
      && rows[0].querySelector('.message-bubble').innerText.trim() === firstText;
  };
  const started = performance.now();
  root.querySelector('.outer-message-container:not(.deep-chat-intro) ' + control).click();
  while (!done()) await new Promise((resolve) => requestAnimationFrame(resolve));
  return performance.now() - started;
}"""


def _two_branches(url: str, thread_id: str, messages: int) -> tuple[str, str]:
    """A thread whose two branches hold `messages` messages each, its first question edited; their first texts."""
    turns = messages // 2
    _turns(url, thread_id, [f"Question {n} of the first branch" for n in range(turns)], [])
    first = _messages(url, thread_id)[0]
    edit = {**chat_body("Question 0 of the second branch"), "kit": {"edit": first["id"]}}
    _reply(url, thread_id, edit)
    history = [{"role": m["role"], "text": m["text"]} for m in _messages(url, thread_id)]
    _turns(url, thread_id, [f"Question {n} of the second branch" for n in range(1, turns)], history)
    return first["text"], "Question 0 of the second branch"


def switch_figures(store: ThreadStore, label: str, runs: int, messages: int = 50) -> dict[str, Any]:
    from kit.testing.browser import chromium_page

    thread_id = new_thread_id()
    rows: list[float] = []
    with BackgroundServer(
        create_app(lambda m: ["An answer of a few words, the same each time."], thread_store=store)
    ) as server:
        older, newer = _two_branches(server.url, thread_id, messages)
        with chromium_page() as page:
            page.add_init_script(f"localStorage.setItem('kit-thread:/', '{thread_id}')")
            page.goto(server.url)
            controls = "document.getElementById('chat').shadowRoot.querySelectorAll('.kit-controls').length"
            until = time.monotonic() + 30
            while page.evaluate(controls) != messages and time.monotonic() < until:
                time.sleep(0.05)  # polled from here: the page's CSP forbids the eval wait_for_function needs
            for run in range(max(runs, 3) * 2):  # back and forth: each switch shows the other branch
                control, text = (".kit-previous", older) if run % 2 == 0 else (".kit-next", newer)
                rows.append(page.evaluate(_SWITCH, [control, messages, text]))
    return {f"switch, {messages} messages, {label}: ms": summary(rows)}


# -- regenerate ------------------------------------------------------------------------------------------


def regenerate_figures(runs: int) -> dict[str, Any]:
    from kit.model.source import LlamaSource, to_llama_messages

    source = LlamaSource(max_tokens=MAX_TOKENS, temperature=0, seed=1)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteThreadStore(Path(folder) / "threads.sqlite")
        with BackgroundServer(create_app(source, thread_store=store)) as server:
            _reply(server.url, new_thread_id(), chat_body("Hello"))  # warm-up: the model loads
            engine = source.engine
            for run in range(runs):
                thread_id, history = new_thread_id(), []
                # Questions of their own per run: none runs on another's cached prefix.
                questions = [f"Tell me one short fact about the number {100 * run + n}." for n in range(1, 11)]
                _turns(server.url, thread_id, questions[:9], history)
                fed = engine.reuse.fed_tokens
                fresh = _turns(server.url, thread_id, questions[9:], history)[0]
                fresh_read = engine.reuse.fed_tokens - fed
                answer = _messages(server.url, thread_id)[-1]
                fed = engine.reuse.fed_tokens
                regenerate = {**chat_body(questions[9], history[:-2]), "kit": {"regenerate": answer["id"]}}
                again, _ = _reply(server.url, thread_id, regenerate)
                again_read = engine.reuse.fed_tokens - fed
                prompt, _ = engine.prompt(to_llama_messages(history[:-1]))  # what a cold engine reads
                for name, value in (
                    ("fresh turn 10 ttft_s", fresh),
                    ("regenerated turn 10 ttft_s", again),
                    ("fresh turn 10, prompt tokens read", fresh_read),
                    ("regenerated turn 10, prompt tokens read", again_read),
                    ("turn-10 prompt, tokens in all", len(prompt)),
                ):
                    rows.setdefault(name, []).append(value)
    return {name: summary(values) for name, values in rows.items()}


def run(runs: int = 3, postgres_url: str | None = None) -> dict[str, Any]:
    """Every figure; the PostgreSQL switch when a URL is given (bench.run_all starts a throwaway cluster)."""
    return regenerate_figures(runs) | on_each_store(switch_figures, runs, postgres_url)


def describe(figures: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    return describe_medians("branches figure", figures)


if __name__ == "__main__":
    main(__doc__, run, describe)
