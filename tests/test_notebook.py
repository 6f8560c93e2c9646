"""The notebook layer: re-runnable background servers, browser URLs, the chat widget, the stream inspector."""

from __future__ import annotations

import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kit import create_app
from kit.notebook import running, serve, show, stop_all
from kit.notebook.browser_url import browser_url
from kit.notebook.child_server import ChildServer, free_port, wait_until_answering
from kit.notebook.inspector import Inspector
from kit.notebook.widget import Server
from kit.serving.client import Received, chat_body, iter_stream, stream_chat
from kit.serving.server import PortInUse
from kit.testing.fakes import ScriptedSource
from tests.helpers import wait_until


@pytest.fixture(autouse=True)
def no_servers_left() -> Iterator[None]:
    yield
    stop_all()


def test_re_serving_under_one_name_on_a_fixed_port_50_times_leaks_no_port_and_no_thread() -> None:
    port = free_port()
    before = threading.active_count()
    for run in range(50):
        server = serve(create_app(f"reply {run}"), name="cell", port=port)
        assert server.port == port
        assert stream_chat(server.url + "chat-stream", "hi").text == f"reply {run}"
        assert list(running()) == ["cell"]
    assert stop_all() == 1
    assert wait_until(lambda: threading.active_count() == before), threading.enumerate()
    with socket.socket() as probe:  # the port is free again
        # As every server does (werkzeug too): closed connections may linger in TIME_WAIT, which this
        # allows; a listening socket left behind would still make bind() fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_re_serving_ends_the_previous_servers_open_stream_and_cancels_its_source() -> None:
    source = ScriptedSource(["tick "] * 1000, delay_s=0.05)
    before = threading.active_count()
    first = serve(create_app(source), name="cell")
    received: list[object] = []

    def read() -> None:
        try:
            received.extend(iter_stream(first.url + "chat-stream", chat_body("go")))
        except httpx.RemoteProtocolError as cut:  # the server ended the stream mid-way, as it should
            received.append(cut)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not any(isinstance(item, Received) for item in received) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.started == 1 and any(isinstance(item, Received) for item in received)

    second = serve(create_app("fresh"), name="cell")  # the same cell, run again

    reader.join(10)
    assert not reader.is_alive()  # the old stream ended instead of ticking on for 50 s
    assert isinstance(received[-1], httpx.RemoteProtocolError)
    assert source.cancelled == 1 and source.completed == 0
    assert not first.running and second.running
    second.stop()
    assert wait_until(lambda: threading.active_count() == before), threading.enumerate()


def serve_in_one_cell(reply: str) -> Server:
    return serve(create_app(reply, title="the same default title"))  # one calling line: one cell


def test_serve_is_keyed_by_the_calling_code_so_two_cells_keep_two_servers() -> None:
    one = serve_in_one_cell("one")
    again = serve_in_one_cell("again")  # the same cell, run again: replaces its server
    other = serve(create_app("other", title="the same default title"))  # another cell: kept beside it
    assert not one.running and again.running and other.running
    assert sorted(running()) == ["the same default title", "the same default title #2"]
    assert stream_chat(again.url + "chat-stream", "hi").text == "again"
    assert stream_chat(other.url + "chat-stream", "hi").text == "other"
    named = serve(create_app("named"), name="Chat A")
    renamed = serve(create_app("named again"), name="Chat A")  # an explicit name wins, from any cell
    assert not named.running and renamed.running and "Chat A" in running()
    assert repr(renamed) == f"<Server 'Chat A' running at {renamed.url}>"


def test_in_a_real_kernel_serve_is_keyed_by_the_cell_id_even_when_the_cell_is_edited() -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(Path(__file__).resolve().parent.parent))
    try:

        def run_cell(code: str, cell_id: str) -> str:
            # As JupyterLab sends it: the cell's id in the request's metadata.
            content = {"code": code, "silent": False, "store_history": True, "allow_stdin": False}
            content["user_expressions"] = {"servers": "sorted(s.browser_url for s in running().values())"}
            message = client.session.msg("execute_request", content, metadata={"cellId": cell_id})
            client.shell_channel.send(message)
            while True:
                reply = client.get_shell_msg(timeout=60)
                if reply["parent_header"].get("msg_id") == message["header"]["msg_id"]:
                    break
            assert reply["content"]["status"] == "ok", reply["content"]
            return reply["content"]["user_expressions"]["servers"]["data"]["text/plain"]

        run_cell("from kit import create_app\nfrom kit.notebook import serve, running, stop_all", "setup")
        first = run_cell("a = serve(create_app('a'))", "cell-a")
        edited = run_cell("a = serve(create_app('a, edited'))  # same cell, new code", "cell-a")
        both = run_cell("b = serve(create_app('b'))", "cell-b")
        pair = run_cell("pair = [serve(create_app('c')), serve(create_app('d'))]", "cell-c")  # one run, two chats
        pair_again = run_cell("pair = [serve(create_app('c')), serve(create_app('d'))]", "cell-c")
        assert first.count("http") == 1 and edited.count("http") == 1 and first != edited
        assert both.count("http") == 2 and pair.count("http") == 4 and pair_again.count("http") == 4
        assert pair != pair_again  # the cell's two earlier servers were replaced by two new ones
        run_cell("stop_all()", "teardown")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_port_held_by_another_notebook_server_is_named_in_the_error() -> None:
    holder = serve(create_app("x"), name="first chat")
    with pytest.raises(PortInUse, match="'first chat'"):
        serve(create_app("y"), name="second chat", port=holder.port)
    assert holder.running


def test_a_server_is_a_context_manager_and_stop_is_idempotent() -> None:
    with serve(create_app("x"), name="ctx") as server:
        assert "ctx" in running()
    assert not server.running and "ctx" not in running()
    server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "healthz")


@pytest.mark.parametrize(
    ("environ", "base", "url", "via"),
    [
        ({}, None, "http://127.0.0.1:8123/", "localhost"),
        ({"JUPYTERHUB_SERVICE_PREFIX": "/user/ada/"}, None, "/user/ada/proxy/8123/", "proxy"),
        ({"JUPYTERHUB_SERVICE_PREFIX": "/user/ada"}, None, "/user/ada/proxy/8123/", "proxy"),
        ({"KIT_NOTEBOOK_BASE": "/"}, None, "/proxy/8123/", "proxy"),
        (
            {"JUPYTERHUB_SERVICE_PREFIX": "/user/ada/"},
            "https://lab.example.org/",
            "https://lab.example.org/proxy/8123/",
            "proxy",
        ),
        ({"COLAB_RELEASE_TAG": "release-colab-123"}, None, "https://8123-colab.example/", "colab"),
        (
            {"COLAB_RELEASE_TAG": "x", "JUPYTERHUB_SERVICE_PREFIX": "/user/ada/"},
            None,
            "https://8123-colab.example/",
            "colab",
        ),
    ],
)
def test_the_browser_url_follows_where_the_notebook_runs(
    environ: dict[str, str], base: str | None, url: str, via: str
) -> None:
    chosen = browser_url(8123, base=base, environ=environ, colab_url=lambda port: f"https://{port}-colab.example/")
    assert (chosen.url, chosen.via) == (url, via)
    assert chosen.why


def test_in_colab_the_url_comes_from_the_kernel_port_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Colab cannot run here: a stand-in google.colab.output records the JavaScript the kit asks it to run.
    asked: list[str] = []
    output = types.SimpleNamespace(eval_js=lambda js: asked.append(js) or "https://abc-8123-colab.dev/")
    colab = types.ModuleType("google.colab")
    colab.output = output  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.delenv("KIT_NOTEBOOK_BASE", raising=False)
    chosen = browser_url(8123)
    assert (chosen.url, chosen.via) == ("https://abc-8123-colab.dev/", "colab")
    assert asked == ["google.colab.kernel.proxyPort(8123, {'cache': false})"]


def test_show_puts_deep_chat_in_an_iframe_with_a_new_tab_link_and_says_how_it_got_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    monkeypatch.delenv("KIT_NOTEBOOK_BASE", raising=False)
    server = serve(create_app("x"), name="widget")
    box = show(server, height=300)
    chat = box.children[0]
    frame, link = (child.value for child in chat.children)
    proxied = f"/user/ada/proxy/{server.port}/"
    assert f'<iframe src="{proxied}"' in frame and "height: 300px" in frame
    assert 'allow="microphone; clipboard-read; clipboard-write"' in frame
    assert f'<a href="{proxied}" target="_blank"' in link and "via proxy" in link
    assert box.where.via == "proxy" and server.browser_url == proxied
    assert repr(box) == f"ChatView(url={proxied!r}, via='proxy')"


def test_the_inspector_counts_pieces_events_bytes_and_how_the_stream_ended() -> None:
    app = create_app(ScriptedSource(["a", "b", "c", "d"], fail_after=3), coalesce_ms=0)
    inspector = Inspector(app)
    server = serve(app, name="inspected")
    reply = stream_chat(server.url + "chat-stream", "spell")
    stats = inspector.wait().stats
    assert reply.text == "abc" and reply.errors
    assert (stats.pieces, stats.chars, stats.events, stats.errors, stats.end) == (3, 3, 3, 1, "failed")
    # Each event's `id:` line, its data line and the blank line after it.
    raw_bytes = sum(len(f"id: {item.id}\n") + len(item.raw.encode()) + 2 for item in reply.items)
    assert stats.bytes == raw_bytes
    assert 0 <= stats.first_piece_s <= stats.first_event_s <= stats.duration_s
    assert inspector.streams[-1].prompt == "spell"


def test_the_inspector_sees_heartbeats_in_a_silence_and_a_client_that_leaves() -> None:
    source = ScriptedSource(["late"], silence_before_s=30)
    app = create_app(source, heartbeat_s=0.2)
    inspector = Inspector(app)
    server = serve(app, name="silent")
    items = iter_stream(server.url + "chat-stream", chat_body("wait"))
    next(items)
    beats = [next(items) for _ in range(3)]
    items.close()  # the client leaves (Deep Chat's Stop button)
    record = inspector.wait(timeout_s=10)
    assert all(isinstance(item, Received) and item.is_heartbeat for item in beats)
    assert record.stats.heartbeats >= 3 and record.stats.pieces == 0 and record.stats.end == "client_gone"
    assert wait_until(lambda: source.cancelled == 1)  # the source learns it in its own thread


def test_the_inspector_widget_updates_while_the_reply_streams() -> None:
    app = create_app(ScriptedSource(["word "] * 40, delay_s=0.03), coalesce_ms=0)
    inspector = Inspector(app, refresh_s=0.0)
    view = inspector.widget()
    table, timeline = view.children[1], view.children[2]
    assert "No stream yet" in table.value
    server = serve(app, name="live")
    seen_while_streaming = ""
    for item in iter_stream(server.url + "chat-stream", chat_body("go")):
        if isinstance(item, Received) and item.payload and not seen_while_streaming:
            time.sleep(0.1)
            seen_while_streaming = table.value
    inspector.wait()
    assert "streaming…" in seen_while_streaming
    assert "finished" in table.value and "<td>40</td>" in table.value
    assert timeline.value.count("<rect") >= 40  # 40 piece ticks, 40 event ticks, at most one per pixel
    assert repr(view) == "StreamInspector()"


def test_a_child_server_that_exits_before_answering_is_reported_with_its_output() -> None:
    script = "print('cannot load the model'); raise SystemExit(3)"
    with pytest.raises(RuntimeError, match=r"exited with 3 before answering: cannot load the model"):
        ChildServer([sys.executable, "-c", script], f"http://127.0.0.1:{free_port()}")


def test_waiting_for_a_server_that_never_answers_ends_in_a_timeout() -> None:
    with pytest.raises(TimeoutError, match=r"did not answer within 0\.3 s"):
        wait_until_answering(f"http://127.0.0.1:{free_port()}/healthz", 0.3)
