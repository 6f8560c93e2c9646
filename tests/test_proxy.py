"""Production serving and real proxies: gunicorn (`serve --prod`), Debian's nginx in front, and `kit doctor`.

nginx runs with an ordinary site config (tests/nginx.py): proxy_buffering on, proxy_read_timeout 5s,
gzip on for text types including text/event-stream. Timings are printed; assertions use wide margins.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from kit import create_app
from kit.serving.client import Reply, stream_chat
from kit.serving.demo import DEMO_TEXT
from kit.serving.doctor import Diagnosis, diagnose
from kit.serving.server import BackgroundServer
from kit.testing.fakes import ScriptedSource
from tests.nginx import Nginx, ProxySettings
from tests.prod_server import REPO, ProdServer

PACED = [f"piece {index:02d} " for index in range(20)]  # one every 100 ms: sent over 1.9 s


def arrival_gaps(reply: Reply) -> list[float]:
    times = [item.at for item in reply.items if item.payload is not None]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def upstream(server: BackgroundServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("worker_class", ["threads", "gevent"])
def test_serve_prod_runs_gunicorn_workers_and_streams_the_demo(worker_class: str) -> None:
    with ProdServer("--worker-class", worker_class, "--workers", "2", "--delay-ms", "20") as server:
        assert len(server.worker_pids) == 2, server.log
        reply = stream_chat(server.url + "chat-stream", "hello")
        assert reply.status == 200 and reply.text == DEMO_TEXT and reply.errors == []
        assert len(reply.events) > 10  # streamed, not sent in one piece
        assert f"Using worker: {'gevent' if worker_class == 'gevent' else 'gthread'}" in "\n".join(server.log)


def test_the_doctors_probe_is_off_under_gunicorn_unless_switched_on() -> None:
    # Under gunicorn any client could otherwise hold a request thread for a minute outside the model's queue.
    with ProdServer("--workers", "1", "--delay-ms", "1") as server:
        closed = diagnose(server.url, silence_s=1.0)
    assert not closed.ok and "X-Kit-Probe" in closed.report()
    with ProdServer("--workers", "1", "--delay-ms", "1", env={"KIT_DOCTOR_PROBE": "1"}) as server:
        opened = diagnose(server.url, silence_s=1.0)
    assert opened.ok, opened.report()


def test_the_gunicorn_config_imports_nothing_that_gevent_must_patch_first() -> None:
    # gunicorn's master imports kit.serving.production (its config) before a gevent worker monkey-patches: had it
    # brought in Flask or the streaming module, their locks would stay blocking ones under gevent.
    modules = "sorted(m for m in sys.modules if m.split('.')[0] in ('kit', 'flask'))"
    probe = f"import sys, kit.serving.production; print({modules})"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "['kit', 'kit.serving', 'kit.serving.production']"


def test_stream_arrives_event_by_event_through_nginx_with_ordinary_defaults(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(ScriptedSource(PACED, delay_s=0.1)))
    with Nginx(upstream(server)) as nginx:
        reply = stream_chat(nginx.url + "chat-stream", "go")  # httpx offers gzip, as browsers do
    gaps = arrival_gaps(reply)
    print(f"\nnginx defaults: {len(reply.events)} events, gaps ms: {[round(gap * 1000) for gap in gaps]}")
    assert reply.text == "".join(PACED)
    # gzip is on for text/event-stream, but the kit's `Content-Encoding: identity` keeps nginx from compressing.
    assert reply.headers.get("content-encoding", "identity") == "identity"
    assert len(reply.events) == len(PACED)  # nothing was merged on the way
    # Sent 100 ms apart: had nginx or gzip held them, they would arrive together (gaps near 0).
    assert sum(gap > 0.03 for gap in gaps) >= len(gaps) / 2, gaps


def test_through_gunicorn_behind_nginx_the_demo_arrives_exactly() -> None:
    with (
        ProdServer("--worker-class", "gevent", "--delay-ms", "10") as server,
        Nginx(f"127.0.0.1:{server.port}") as nginx,
    ):
        reply = stream_chat(nginx.url + "chat-stream", "hello")
    assert reply.text == DEMO_TEXT and len(reply.events) > 10


@pytest.mark.parametrize(("heartbeat_s", "survives"), [(2.0, True), (10.0, False)])
def test_a_20s_silence_survives_nginx_read_timeout_of_5s_only_thanks_to_heartbeats(
    serve, heartbeat_s: float, survives: bool
) -> None:  # type: ignore[no-untyped-def]
    silence = 20.0 if survives else 8.0  # the control (no timely heartbeat) is cut after 5 s anyway
    server = serve(create_app(ScriptedSource(["after the silence"], silence_before_s=silence), heartbeat_s=heartbeat_s))
    with Nginx(upstream(server)) as nginx:
        try:
            reply = stream_chat(nginx.url + "chat-stream", "think hard", timeout=40)
            text = reply.text
        except Exception as error:  # nginx may also close the connection mid-chunk
            text = f"cut: {type(error).__name__}"
        proxy_log = nginx.error_log()
    if survives:
        assert text == "after the silence"
        assert reply.heartbeats >= 8  # one every 2 s over 20 s, all through nginx
    else:
        # The control: after 5 s without a byte nginx gives up on the kit. It ends the client's response
        # as if the reply were complete (empty here), which is why the doctor compares texts.
        assert text != "after the silence" and "upstream timed out" in proxy_log


# ----------------------------------------------------------------------------------------------------
# `kit doctor` against nginx: what it says for each configuration, and that it names the fix.

DOCTOR_CASES = {
    "buffering on, X-Accel-Buffering honoured": (ProxySettings(), 2.0),
    "buffering off": (ProxySettings(buffering=False), 2.0),
    "buffering forced on (X-Accel-Buffering ignored)": (ProxySettings(ignore_accel_buffering=True), 2.0),
    "buffering off, X-Accel-Buffering ignored": (ProxySettings(buffering=False, ignore_accel_buffering=True), 2.0),
    "gzip forced on, buffering forced on": (
        ProxySettings(ignore_accel_buffering=True, hide_content_encoding=True),
        2.0,
    ),
    "gzip forced on, buffering off": (ProxySettings(buffering=False, hide_content_encoding=True), 2.0),
    "heartbeat slower than the read timeout": (ProxySettings(), 10.0),
}


@pytest.fixture(scope="module")
def doctor_results() -> dict[str, Diagnosis]:
    """Every configuration probed at once (each run is mostly waiting), so the module costs one probe's time."""

    # The apps are built here, one after another: Flask compiles each route with `ast.parse`, which CPython 3.11
    # does not make thread-safe ("AST constructor recursion depth mismatch" when two threads build apps at once).
    apps = {case: create_app("unused", heartbeat_s=heartbeat_s) for case, (_, heartbeat_s) in DOCTOR_CASES.items()}

    def probe(case: str) -> Diagnosis:
        settings, _ = DOCTOR_CASES[case]
        with BackgroundServer(apps[case]) as server, Nginx(upstream(server), settings) as nginx:
            # A silence longer than the read timeout, so that a missing heartbeat gets the stream cut.
            return diagnose(nginx.url, silence_s=7.0)

    with ThreadPoolExecutor(len(DOCTOR_CASES)) as pool:
        results = dict(zip(DOCTOR_CASES, pool.map(probe, DOCTOR_CASES), strict=True))
    for case, diagnosis in results.items():
        print(f"\n--- {case}\n{diagnosis.report()}")
    return results


def failed(diagnosis: Diagnosis) -> set[str]:
    return {finding.check for finding in diagnosis.findings if not finding.ok}


@pytest.mark.parametrize(
    "case", ["buffering on, X-Accel-Buffering honoured", "buffering off", "buffering off, X-Accel-Buffering ignored"]
)
def test_doctor_passes_a_proxy_that_streams(doctor_results: dict[str, Diagnosis], case: str) -> None:
    diagnosis = doctor_results[case]
    assert diagnosis.ok, diagnosis.report()
    assert diagnosis.timings["heartbeats"] >= 2 and diagnosis.timings["held_back_s"] < 0.5


def test_forced_buffering_still_streams_because_each_event_leaves_in_one_write(
    doctor_results: dict[str, Diagnosis],
) -> None:
    # nginx 1.22 buffering a chunked response passes on what it has read each time it reads; werkzeug
    # used to write an event in four sends, and the trailing CRLF arriving later held the event back until
    # the next one (flaky, load-dependent). kit.serving.server writes each chunk whole, so nothing waits.
    diagnosis = doctor_results["buffering forced on (X-Accel-Buffering ignored)"]
    assert diagnosis.ok, diagnosis.report()
    assert diagnosis.timings["held_back_s"] < 0.5


def test_doctor_sees_compression_and_the_batching_it_causes(doctor_results: dict[str, Diagnosis]) -> None:
    batched = doctor_results["gzip forced on, buffering forced on"]
    assert failed(batched) == {"incremental", "heartbeats", "compression"}, batched.report()
    assert "gzip_types" in batched.finding("compression").fix
    incremental_fix = batched.finding("incremental").fix
    assert "proxy_buffering off" in incremental_fix and "proxy_ignore_headers" in incremental_fix
    assert batched.timings["longest_quiet_s"] > 5  # the whole reply arrived in one lump at the end
    flushed = doctor_results["gzip forced on, buffering off"]
    assert failed(flushed) == {"compression"}, flushed.report()  # compressed, but flushed per event


def test_doctor_sees_the_stream_cut_by_a_read_timeout_and_names_both_fixes(
    doctor_results: dict[str, Diagnosis],
) -> None:
    diagnosis = doctor_results["heartbeat slower than the read timeout"]
    assert "complete" in failed(diagnosis), diagnosis.report()
    fix = diagnosis.finding("complete").fix
    assert "proxy_read_timeout" in fix and "heartbeat_s" in fix


def test_doctor_command_line_exit_status(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app("unused", heartbeat_s=0.5))
    command = [sys.executable, "-m", "kit", "doctor", server.url, "--silence", "1.5"]
    passed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "verdict: streaming works end to end" in passed.stdout
    closed = serve(create_app("unused", doctor_probe=False))  # the probe reaches the source instead
    refused = subprocess.run([*command[:4], closed.url], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "[FAIL] probe" in refused.stdout and "X-Kit-Probe" in refused.stdout
