"""Rejoining a running reply in Debian's chromium, on the kit's page and the real Deep Chat bundle: a reload at a
random moment of a long reply ends with the same bubble as an uninterrupted run, a second tab watches the reply
live, and Stop in the second tab stops it for both."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx

from kit import create_app
from kit.testing.browser import chromium_page
from kit.testing.fakes import ScriptedSource
from tests.helpers import wait_until
from tests.rejoin_prod import long_reply
from tests.test_browser import send
from tests.test_threads_browser import bubbles

# 2,000 pieces ("tokens") over about 4 s: words, punctuation and line breaks, as a model writes them.
TOKENS = long_reply(2000)


def last_answer(page: Any) -> str:
    shown = bubbles(page)
    return shown[-1][1] if shown and shown[-1][0] == "ai" else ""


def answer_count(page: Any) -> int:
    return sum(role == "ai" for role, _ in bubbles(page))


def settled(page: Any, timeout: float = 30.0) -> str:
    """The last answer once the reply has ended (the page's stream read to its end)."""
    assert wait_until(lambda: page.evaluate("!!document.querySelector('#chat').shadowRoot"), timeout=10)
    end_marker = "w1999"
    assert wait_until(lambda: end_marker in last_answer(page), timeout=timeout), last_answer(page)[-200:]
    return last_answer(page)


def test_a_reload_at_a_random_moment_rejoins_into_an_identical_bubble(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(TOKENS, delay_s=0.002)
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    with chromium_page() as page:
        page.goto(server.url)
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 0)
        send(page, "write")
        uninterrupted = settled(page)
        page.locator("#kit-new-chat").click()
        assert wait_until(lambda: answer_count(page) == 0)
        send(page, "write")
        assert wait_until(lambda: "w" in last_answer(page), timeout=10)
        page.wait_for_timeout(random.uniform(100, 2500))  # a random moment of the reply
        page.reload()
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.rejoined") is not None, 15)
        assert settled(page) == uninterrupted
        assert answer_count(page) == 1 and source.cancelled == 0
        page.reload()  # after the end: the transcript holds the whole reply, once
        assert wait_until(lambda: answer_count(page) == 1 and last_answer(page) == uninterrupted, timeout=10)


def test_a_second_tab_watches_live_and_its_stop_stops_both(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(TOKENS, delay_s=0.01)  # 20 s: long enough to be stopped mid-way
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    with chromium_page() as first:
        first.goto(server.url)
        assert wait_until(lambda: first.evaluate("window.kitThread && window.kitThread.restored") == 0)
        send(first, "write")
        assert wait_until(lambda: "w12 " in last_answer(first), timeout=10)
        second = first.context.new_page()
        second.goto(server.url)
        assert wait_until(lambda: second.evaluate("window.kitThread && window.kitThread.rejoined") is not None, 15)
        assert wait_until(lambda: len(last_answer(second)) > 0, timeout=10)
        grown = len(last_answer(second))
        assert wait_until(lambda: len(last_answer(second)) > grown, timeout=10)  # live, not a snapshot
        second.locator("#stop-icon").click()
        assert wait_until(lambda: source.cancelled == 1, timeout=10), "Stop in the second tab did not stop the run"
        # The first tab's stream ends there too: it holds what the run wrote until the stop reached it (a few
        # pieces more than the second tab, which stopped reading at the click); a reload shows that same text.
        stopped_at = last_answer(second)
        run_url = f"{server.url}threads/{first.evaluate('window.kitThread.id()')}/run"
        assert wait_until(lambda: httpx.get(run_url).json() == {"running": False}, timeout=10)
        second.reload()  # the transcript: what the run wrote, which is what the first tab ends with
        assert wait_until(lambda: answer_count(second) == 1 and last_answer(second) == last_answer(first), timeout=10)
        assert last_answer(first).startswith(stopped_at.rstrip()) and "w1999" not in last_answer(first)


def test_a_reply_cut_by_a_proxy_restart_is_rejoined_into_the_same_bubble(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.nginx import Nginx

    source = ScriptedSource(TOKENS, delay_s=0.003)
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    with Nginx(f"127.0.0.1:{server.port}") as nginx, chromium_page() as page:
        page.goto(nginx.url)
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 0)
        send(page, "write")
        assert wait_until(lambda: "w12 " in last_answer(page), timeout=10)
        nginx.restart()  # the page's connection is cut mid-reply; the page retries until nginx is back
        whole = settled(page)
        assert page.evaluate("window.kitRun.rejoins") >= 1 and answer_count(page) == 1
        assert source.cancelled == 0
        page.reload()  # the transcript: the reply the uninterrupted source wrote, shown the same way
        assert wait_until(lambda: answer_count(page) == 1 and last_answer(page) == whole, timeout=10)
