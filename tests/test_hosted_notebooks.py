"""Notebook 01 where readers mostly run it: on a JupyterHub, and on a remote Jupyter server. Both are real and on
loopback; the chat goes through jupyter-server-proxy, as it would from another machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from flask import Flask, Response, request

from kit import create_app
from kit.serving.client import iter_stream, stream_chat
from kit.serving.doctor import ACCEPT_FIX, AUTH_FIX, Diagnosis, diagnose
from kit.serving.server import BackgroundServer
from kit.testing.browser import chromium_page
from kit.testing.fakes import ScriptedSource
from tests.jupyter_servers import NOTEBOOK, ROOT, Hub, Jupyter, jupyterhub, jupyterlab, start_user_server
from tests.notebook_ui import Responses, TutorialRun, log_in, run_tutorial

# One hub and one remote server for the module: the browser tests and the doctor's probes share them.


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with jupyterhub(tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture(scope="module")
def remote_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    # The browser of a remote server is on another machine: the user points the kit at the server's base URL.
    with jupyterlab(tmp_path_factory.mktemp("remote"), {"KIT_NOTEBOOK_BASE": "/"}) as running:
        yield running


def _assert_streamed_through(responses: Responses, prefix: str, run: TutorialRun) -> None:
    assert responses.exactly(f"{prefix}chat-stream") == [200, 200], responses.seen
    assert responses.exactly(f"{prefix}chat-stream/stop") == [200], responses.seen  # the Stop, through the proxy
    assert responses.to(prefix)[0][0] == 200  # the Deep Chat page itself, through the proxy
    assert not responses.refused(), responses.refused()
    # jupyter-server-proxy 4.6 keeps reading the kit's reply after the browser has gone, so the disconnect never
    # reaches the kit: Stop gets there by the page's stop request (kit.web.blueprint, STOP_ROUTE).
    assert run.stopped_end == "client_gone", run.stopped_end


@pytest.mark.timeout(600)
def test_notebook_01_on_jupyterhub_streams_through_the_users_proxy(hub: Hub) -> None:
    responses = Responses()
    with chromium_page(viewport={"width": 1400, "height": 1000}) as page:
        responses.watch(page)
        log_in(page, hub)
        run = run_tutorial(page, f"{hub.url}{hub.home}lab/tree/{NOTEBOOK.name}", hub.log.with_suffix(".png"))
    # show() read JUPYTERHUB_SERVICE_PREFIX, which the hub set for the kernel.
    assert re.fullmatch(rf"/user/{hub.user}/proxy/\d+/", run.iframe_src), run.iframe_src
    _assert_streamed_through(responses, f"{hub.url}{run.iframe_src}", run)


@pytest.mark.timeout(400)
def test_notebook_01_on_a_remote_jupyter_server_streams_through_its_proxy(remote_lab: Jupyter) -> None:
    responses = Responses()
    with chromium_page(viewport={"width": 1400, "height": 1000}) as page:
        responses.watch(page)
        url = f"{remote_lab.lab_url(NOTEBOOK.name)}?token={remote_lab.token}"
        run = run_tutorial(page, url, remote_lab.log.with_suffix(".png"))
    assert re.fullmatch(r"/proxy/\d+/", run.iframe_src), run.iframe_src  # KIT_NOTEBOOK_BASE=/
    _assert_streamed_through(responses, f"{remote_lab.url}{run.iframe_src}", run)


# ----------------------------------------------------------------------------------------------------
# `kit doctor` and kit.serving.client through the real jupyter-server-proxy: how a hub or a server is told who asks.


def _login_cookie(jupyter: Jupyter) -> str:
    """The cookie a browser holds after opening the server with its token, as `--cookie` takes it."""
    with httpx.Client(timeout=30) as client:
        client.get(f"{jupyter.url}/lab?token={jupyter.token}", follow_redirects=True)
        return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def _assert_streams_with_the_accept_note(diagnosis: Diagnosis) -> None:
    assert diagnosis.ok, diagnosis.report()
    # Without `Accept: text/event-stream` jupyter-server-proxy buffers: the doctor says so, and what to do.
    note = diagnosis.finding("accept-header")
    assert note.ok and "is buffered" in note.detail and note.fix == ACCEPT_FIX, diagnosis.report()
    assert "[note] accept-header" in diagnosis.report()


@pytest.mark.timeout(300)
def test_doctor_passes_jupyter_server_proxy_with_a_token_in_the_url_a_header_or_a_cookie(remote_lab: Jupyter) -> None:
    with BackgroundServer(create_app("unused", heartbeat_s=0.5)) as kit_server:
        base = f"{remote_lab.url}/proxy/{kit_server.port}/"
        ways = {
            "token in the query string": {"url": f"{base}?token={remote_lab.token}"},
            "token header": {"url": base, "headers": {"Authorization": f"token {remote_lab.token}"}},
            "login cookie": {"url": base, "cookie": _login_cookie(remote_lab)},
            "nothing": {"url": base},
        }
        with ThreadPoolExecutor(len(ways)) as pool:  # each probe is mostly waiting
            results = dict(zip(ways, pool.map(lambda kw: diagnose(silence_s=1.5, **kw), ways.values()), strict=True))
    for way, diagnosis in results.items():
        print(f"\n--- {way}\n{diagnosis.report()}")
    for way in ("token in the query string", "token header", "login cookie"):
        _assert_streams_with_the_accept_note(results[way])
    assert results["token in the query string"].url.endswith(f"/chat-stream?token={remote_lab.token}")
    refused = results["nothing"].finding("reach")
    assert not refused.ok and "HTTP 403" in refused.detail and refused.fix == AUTH_FIX


def test_doctor_adds_no_note_when_requests_without_the_accept_header_stream_too(serve) -> None:  # type: ignore[no-untyped-def]
    diagnosis = diagnose(serve(create_app("unused", heartbeat_s=0.5)).url, silence_s=1.0)  # straight to the kit
    assert diagnosis.ok, diagnosis.report()
    finding = diagnosis.finding("accept-header")
    assert finding.ok and not finding.fix and "streams too" in finding.detail
    assert "[note]" not in diagnosis.report() and diagnosis.report().endswith("verdict: streaming works end to end")


@pytest.mark.timeout(400)
def test_doctor_command_line_through_the_hubs_proxy_with_a_token_header(hub: Hub) -> None:
    start_user_server(hub)
    with BackgroundServer(create_app("unused", heartbeat_s=0.5)) as kit_server:
        url = f"{hub.url}{hub.home}proxy/{kit_server.port}/"
        command = [sys.executable, "-m", "kit", "doctor", url, "--silence", "1.5"]
        header = ["--header", f"Authorization: token {hub.token}"]
        passed = subprocess.run([*command, *header], cwd=ROOT, capture_output=True, text=True, timeout=120)
        refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(passed.stdout, refused.stdout)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "verdict: streaming works end to end" in passed.stdout
    assert "[note] accept-header" in passed.stdout and "Accept: text/event-stream" in passed.stdout
    # Without it the hub redirects to its login page: the doctor names the ways to authenticate.
    assert refused.returncode == 1 and "[FAIL] reach" in refused.stdout and "--header" in refused.stdout


def test_kit_client_sends_accept_text_event_stream(serve) -> None:  # type: ignore[no-untyped-def]
    echo = Flask("accept-echo")  # answers with the Accept header it got, as one event

    @echo.post("/chat-stream")
    def chat_stream() -> Response:
        event = json.dumps({"text": request.headers.get("Accept", "")})
        return Response(f"data: {event}\n\n", mimetype="text/event-stream")

    assert stream_chat(serve(echo).url + "chat-stream", "which Accept?").text == "text/event-stream"


@pytest.mark.timeout(300)
def test_kit_client_streams_through_jupyter_server_proxy(remote_lab: Jupyter) -> None:
    source = ScriptedSource(["word "] * 10, delay_s=0.2)
    with BackgroundServer(create_app(source, granularity="chunk")) as kit_server:
        url = f"{remote_lab.url}/proxy/{kit_server.port}/chat-stream?token={remote_lab.token}"
        items = list(iter_stream(url, {"messages": [{"role": "user", "text": "hi"}]}))
    arrivals = [item.at for item in items[1:] if getattr(item, "payload", None)]
    assert len(arrivals) == 10
    assert arrivals[-1] - arrivals[0] > 1.0  # one by one, 200 ms apart: not buffered into one lump
