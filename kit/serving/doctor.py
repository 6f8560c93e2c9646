"""`python -m kit doctor URL`: check what stands between the user and the kit (a proxy, a hub, a tunnel).

The doctor sends a probe chat to the kit's own stream route with an `X-Kit-Probe` header. Instead of
calling the model, the kit answers it with a known, bounded script through the real pipeline: a few
paced events, then a silence longer than a heartbeat, then an end marker. Comparing what arrives with
what was sent shows whether events arrive one by one, whether heartbeats pass during a silence, and
whether anything compresses or cuts the stream; each problem comes with the fix. When the probe streams, a
short second one without `Accept: text/event-stream` shows whether a proxy on the way (jupyter-server-proxy)
streams only requests that carry it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from kit.pipeline.sse import END, parse_line, sse_lines
from kit.web.probe import _SIGNATURE, DEFAULT_SILENCE_S, MAX_SILENCE_S, PROBE_HEADER, ProbePlan, probe_pieces

# An event held back longer than this (beyond network and scheduling noise) means something buffers.
HELD_BACK_LIMIT_S = 1.0


# ----------------------------------------------------------------------------------------------------
# The client side: run a probe and judge what arrived.


@dataclass(frozen=True)
class Finding:
    """One check: whether it passed, what was measured, and what to do when it did not."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Diagnosis:
    """The findings of one probe, with the raw timings they came from."""

    url: str
    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    verdicts: tuple[str, str] = ("streaming works end to end", "streaming is impaired; see the fixes")

    @property
    def ok(self) -> bool:
        return all(finding.ok for finding in self.findings)

    def finding(self, check: str) -> Finding:
        """The finding for one check (KeyError when that check did not run)."""
        for finding in self.findings:
            if finding.check == check:
                return finding
        raise KeyError(check)

    def report(self) -> str:
        """A human-readable report: one line per check, with the fix under each failed one."""
        lines = [f"kit doctor: {self.url}"]
        for finding in self.findings:
            state = "FAIL" if not finding.ok else "note" if finding.fix else "ok"  # a note: passed, with advice
            lines.append(f"  [{state}] {finding.check}: {finding.detail}")
            if finding.fix:
                lines.append(f"         fix: {finding.fix}")
        verdict = self.verdicts[0] if self.ok else self.verdicts[1]
        if self.ok and any(finding.fix for finding in self.findings):
            verdict += " (read the note)"
        lines.append(f"verdict: {verdict}")
        return "\n".join(lines)


BUFFERING_FIX = (
    "something buffers the response. nginx: `proxy_buffering off;` in the location that proxies the kit, "
    "and do not list X-Accel-Buffering in `proxy_ignore_headers` (the kit sends `X-Accel-Buffering: no`); "
    "Apache: `flushpackets=on` on ProxyPass; other proxies, hubs and tunnels: turn response buffering off "
    "for text/event-stream"
)
COMPRESSION_FIX = (
    "something compresses the stream although the kit sends `Content-Encoding: identity`. nginx: do not "
    "hide or clear the upstream Content-Encoding (`proxy_hide_header Content-Encoding`), or remove "
    "text/event-stream from `gzip_types`; elsewhere exclude text/event-stream from compression"
)
HEARTBEAT_FIX = (
    "heartbeats (`: ping` comment lines) did not arrive during the silence: something drops SSE comments or "
    "holds them back. Turn response buffering off (see above), and make sure nothing rewrites the event stream"
)
AUTH_FIX = (
    "the server in front wants to know who asks (a Jupyter server or hub answers 403, or redirects to its "
    "login page): keep its `?token=...` in the URL, or pass `--header 'Authorization: token TOKEN'` "
    "(a Jupyter or hub API token), or `--cookie 'NAME=VALUE'` copied from your logged-in browser"
)
PROBE_FIX = (
    "point the doctor at the kit's base URL or its chat-stream URL; the probe is on by default except under "
    "gunicorn: there, set KIT_DOCTOR_PROBE=1 (or create_app(..., doctor_probe=True)) while you check; make sure "
    "nothing in between strips the X-Kit-Probe request header"
)


def stream_url(url: str) -> str:
    """The chat-stream URL for a base URL, a page URL, or the chat-stream URL itself; the query string (a
    Jupyter `?token=...`, say) is kept.

    >>> stream_url("http://127.0.0.1:8000"), stream_url("https://hub.example/user/ann/proxy/8000/")
    ('http://127.0.0.1:8000/chat-stream', 'https://hub.example/user/ann/proxy/8000/chat-stream')
    >>> stream_url("http://h/app/chat-stream"), stream_url("http://h/proxy/8000/?token=abc")
    ('http://h/app/chat-stream', 'http://h/proxy/8000/chat-stream?token=abc')
    """
    parts = urlsplit(url)
    path = parts.path
    if not path.rstrip("/").endswith("/chat-stream"):
        # A page URL (".../index.html") names its folder; a base URL without its slash is that folder.
        folder = path.rsplit("/", 1)[0] if "." in path.rsplit("/", 1)[-1] else path.rstrip("/")
        path = f"{folder}/chat-stream"
    return urlunsplit(parts._replace(path=path, fragment=""))


def parse_header(text: str) -> tuple[str, str]:
    """A `Name: value` header as given on the command line.

    >>> parse_header("Authorization: token abc")
    ('Authorization', 'token abc')
    """
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ValueError(f"a header is 'Name: value', not {text!r}")
    return name.strip(), value.strip()


@dataclass
class _Arrivals:
    started: float
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    headers_at: float | None = None
    texts: list[tuple[float, str]] = field(default_factory=list)
    beats: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    body: str = ""
    broken: str = ""  # how the connection failed, if it did
    ended_at: float | None = None


def diagnose(
    url: str,
    *,
    silence_s: float = DEFAULT_SILENCE_S,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    cookie: str | None = None,
) -> Diagnosis:
    """Send one probe through `url` (the kit's base URL or its chat-stream URL, query string kept) and judge
    what arrived. `headers` and `cookie` (`"a=b; c=d"`) go with every request: how a hub or a Jupyter server
    knows who asks (`Authorization: token ...`, its login cookie).

    When the probe streams, a second, short probe without `Accept: text/event-stream` follows: a proxy that
    streams only requests carrying it (jupyter-server-proxy) buffers that one, and the report says so.
    `timeout_s` is the longest wait for any single line of the stream (on top of the silence).
    """
    from kit.serving.client import ACCEPT_HEADERS

    target = stream_url(url)
    # The probes choose their Accept header themselves.
    extra = {name: value for name, value in (headers or {}).items() if name.lower() != "accept"}
    if cookie:
        extra["Cookie"] = cookie
    silence_s = min(max(silence_s, 0.0), MAX_SILENCE_S)
    diagnosis = _judge(target, _receive(target, silence_s, timeout_s, {**extra, **ACCEPT_HEADERS}))
    findings = {finding.check: finding for finding in diagnosis.findings}
    if "incremental" in findings and findings["incremental"].ok:
        diagnosis.findings.append(_judge_accept(_receive(target, 0.0, timeout_s, extra)))
    return diagnosis


ACCEPT_FIX = (
    "a proxy on the way streams only requests whose Accept header is exactly `text/event-stream` "
    "(jupyter-server-proxy, so JupyterHub and remote Jupyter servers, does this) and buffers the whole reply "
    "of any other. Deep Chat and kit.serving.client send it; your own page or client must send "
    "`Accept: text/event-stream` with its POST too"
)


def _judge_accept(got: _Arrivals) -> Finding:
    # Judged like the main probe's pacing; only whether the ticks came one by one matters here.
    probe = Diagnosis("")
    if got.status == 200:
        _judge_pacing(probe, got, ProbePlan(silence_s=0.0))
    streamed = bool(probe.findings) and probe.findings[0].ok
    if streamed:
        return Finding("accept-header", True, "a request without `Accept: text/event-stream` streams too")
    what = probe.findings[0].detail if probe.findings else f"HTTP {got.status or got.broken}"
    return Finding(
        "accept-header", True, f"a request without `Accept: text/event-stream` is buffered ({what})", ACCEPT_FIX
    )


def _receive(target: str, silence_s: float, timeout_s: float, extra: Mapping[str, str]) -> _Arrivals:
    import httpx

    from kit.serving.client import chat_body

    headers = {
        PROBE_HEADER: f"silence={silence_s:g}",
        # What a browser offers; whether something takes it up is one of the checks.
        "Accept-Encoding": "gzip, deflate",
        **extra,
    }
    arrivals = _Arrivals(started=time.perf_counter())
    timeout = httpx.Timeout(timeout_s + silence_s, connect=timeout_s)
    try:
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("POST", target, json=chat_body("kit doctor probe"), headers=headers) as response,
        ):
            arrivals.status = response.status_code
            arrivals.headers = dict(response.headers)
            arrivals.headers_at = time.perf_counter()
            if response.status_code != 200:
                arrivals.body = response.read().decode(errors="replace")[:500]
                return arrivals
            for line in sse_lines(response.iter_text()):
                _take_line(arrivals, line, time.perf_counter())
                if arrivals.texts and not arrivals.texts[0][1].startswith(_SIGNATURE):
                    return arrivals  # not the probe: leave now, which cancels whatever answered instead
    except httpx.HTTPError as error:
        arrivals.broken = f"{type(error).__name__}: {error}"
    arrivals.ended_at = time.perf_counter()
    return arrivals


def _take_line(arrivals: _Arrivals, line: str, now: float) -> None:
    import json

    name, value = parse_line(line)
    if line.startswith(":") and line != END.rstrip("\n"):
        arrivals.beats.append(now)
    elif name == "data":
        try:
            payload = json.loads(value)
        except ValueError:
            return
        if isinstance(payload, dict) and isinstance(payload.get("text"), str):
            arrivals.texts.append((now, payload["text"]))
        elif isinstance(payload, dict) and "error" in payload:
            arrivals.errors.append(str(payload["error"]))


def _parse_head(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for part in text.split()[1:]:
        key, _, value = part.partition("=")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values


def _judge(target: str, got: _Arrivals) -> Diagnosis:
    diagnosis = Diagnosis(target)
    add = diagnosis.findings.append
    if got.status == 0:
        add(Finding("reach", False, f"no response from {target} ({got.broken})", "check the URL and that the kit runs"))
        return diagnosis
    if got.status != 200:
        fix = AUTH_FIX if got.status in (301, 302, 303, 307, 308, 401, 403) else PROBE_FIX
        add(Finding("reach", False, f"HTTP {got.status}: {_gist(got.body)}", fix))
        return diagnosis
    full = "".join(text for _, text in got.texts)
    if not full.startswith(_SIGNATURE):
        detail = "the reply is not a probe" if full else f"no event arrived ({got.broken or 'the stream ended empty'})"
        add(Finding("probe", False, detail, PROBE_FIX))
        return diagnosis
    head = _parse_head(full.split("\n", 1)[0])
    heartbeat_s = head.get("heartbeat_s", 2.0)
    plan = ProbePlan(silence_s=head.get("silence_s", DEFAULT_SILENCE_S))
    expected = "".join(probe_pieces(plan, heartbeat_s))
    add(Finding("reach", True, f"HTTP 200 from {target}, headers after {_ms(got.headers_at, got.started)}"))
    diagnosis.timings["headers_s"] = (got.headers_at or got.started) - got.started

    content_type = got.headers.get("content-type", "")
    add(
        Finding(
            "content-type",
            content_type.startswith("text/event-stream"),
            content_type or "missing",
            "" if content_type.startswith("text/event-stream") else "something rewrites the Content-Type header",
        )
    )

    _judge_pacing(diagnosis, got, plan)
    _judge_heartbeats(diagnosis, got, plan, heartbeat_s, complete=full == expected)

    encoding = got.headers.get("content-encoding", "identity").lower()
    if encoding in ("", "identity"):
        add(Finding("compression", True, "the stream arrived uncompressed"))
    else:
        add(Finding("compression", False, f"the stream arrived with Content-Encoding: {encoding}", COMPRESSION_FIX))

    complete = full == expected and not got.errors
    if complete:
        detail = f"all {len(expected)} characters arrived exactly, in order"
    elif got.errors:
        detail = f"the kit sent an error: {got.errors[0]}"
    else:
        ended = (got.ended_at or time.perf_counter()) - got.started
        how = got.broken or "the connection closed"
        detail = f"{len(full)} of {len(expected)} characters arrived; {how} after {ended:.1f} s"
    add(Finding("complete", complete, detail, "" if complete else _cut_fix(got, heartbeat_s)))
    return diagnosis


def _judge_pacing(diagnosis: Diagnosis, got: _Arrivals, plan: ProbePlan) -> None:
    # The header line and the ticks leave the kit `interval_s` apart. Relative to the earliest of them,
    # how late did each arrive? A buffer in between shows as lateness: a proxy that sends what it read
    # only when the next read comes holds the last event before a pause until the next heartbeat.
    paced = [at for at, text in got.texts if text.startswith((_SIGNATURE, "tick"))]
    if len(paced) < 2:
        diagnosis.findings.append(Finding("incremental", False, "fewer than two paced events arrived", BUFFERING_FIX))
        return
    offsets = [at - index * plan.interval_s for index, at in enumerate(paced)]
    delays = [offset - min(offsets) for offset in offsets]
    # nginx with buffering forced on sends what it read only when the next read comes: most events
    # arrive one interval late, and the last one before a pause waits for the next heartbeat.
    late = sum(delay >= plan.interval_s / 2 for delay in delays)
    diagnosis.timings.update(first_event_s=paced[0] - got.started, held_back_s=max(delays), late_events=late)
    incremental = max(delays) <= HELD_BACK_LIMIT_S and late < len(paced) / 2
    detail = (
        f"{len(paced)} events sent {plan.interval_s * 1000:.0f} ms apart: {late} arrived "
        f"{plan.interval_s * 500:.0f} ms or more behind their schedule, the most delayed {max(delays):.2f} s"
    )
    diagnosis.findings.append(Finding("incremental", incremental, detail, "" if incremental else BUFFERING_FIX))


def _judge_heartbeats(
    diagnosis: Diagnosis, got: _Arrivals, plan: ProbePlan, heartbeat_s: float, *, complete: bool
) -> None:
    # The kit never stays quiet longer than one heartbeat interval; what the client sees is what counts
    # for its own timeouts, so the longest gap between any two lines received (from the request on) is
    # the measure. Heartbeats delivered in a lump at the end do not count as passing.
    end = got.ended_at or time.perf_counter()
    marks = sorted([got.started, *got.beats, *(at for at, _ in got.texts), end])
    longest = max(later - earlier for earlier, later in itertools.pairwise(marks))
    diagnosis.timings.update(heartbeats=len(got.beats), longest_quiet_s=longest)
    expected = int(plan.silence_s // heartbeat_s)
    if expected == 0:
        diagnosis.findings.append(
            Finding("heartbeats", True, f"not tested: the silence ({plan.silence_s:g} s) is shorter than a heartbeat")
        )
        return
    # One second of slack for scheduling and the network; a heartbeat held back until the next one
    # (a buffering proxy) doubles the quiet spell and fails.
    passed = len(got.beats) >= max(expected - 1, 1) and longest <= heartbeat_s + 1.0
    detail = (
        f"{len(got.beats)} heartbeats arrived for a {plan.silence_s:g} s silence (one due every {heartbeat_s:g} s); "
        f"the longest the client went without data was {longest:.1f} s"
    )
    fix = ""
    if not passed:
        fix = HEARTBEAT_FIX if complete else "the stream was cut during the silence; see `complete` below"
    diagnosis.findings.append(Finding("heartbeats", passed, detail, fix))


def _cut_fix(got: _Arrivals, heartbeat_s: float) -> str:
    if got.errors:
        if "restarting" in got.errors[0]:
            return "the kit was stopped or restarted during the probe: run the doctor again"
        return "read the kit's log for the error"
    quiet = (got.ended_at or time.perf_counter()) - max([got.started, *got.beats, *(at for at, _ in got.texts)])
    return (
        f"something closed the stream after {quiet:.1f} s without data: an idle or read timeout shorter than the "
        f"kit's heartbeat ({heartbeat_s:g} s). Raise it (nginx: `proxy_read_timeout 60s;`) or lower "
        "create_app(heartbeat_s=...) below it; a total-duration limit on the proxy or tunnel cuts long replies too"
    )


def _gist(body: str) -> str:
    """A refusal's body in a few words: an HTML page by its title (a login page, say), anything else cut short.

    >>> _gist("<html><head><title>Jupyter Server</title></head>...</html>")
    "an HTML page titled 'Jupyter Server'"
    """
    import re

    title = re.search(r"<title>\s*(.*?)\s*</title>", body, re.IGNORECASE | re.DOTALL)
    return f"an HTML page titled {title.group(1)[:80]!r}" if title else repr(body[:200])


def _ms(at: float | None, start: float) -> str:
    return "n/a" if at is None else f"{(at - start) * 1000:.0f} ms"


# ----------------------------------------------------------------------------------------------------
# This machine: the llama.cpp the kit would run here.


def llama_build_finding() -> Finding:
    """The installed llama.cpp's CPU features, failed when its AMX code would crash on this CPU."""
    from kit.model.cpu import inspect_llama_build

    build = inspect_llama_build()
    if build is None:
        return Finding("llama.cpp build", True, "llama-cpp-python is not installed (the embedded model is off)")
    return Finding("llama.cpp build", not build.warning, build.summary(), build.warning)


def diagnose_here() -> Diagnosis:
    """The checks that need no server: what this machine would run the embedded model with."""
    verdicts = ("the embedded model can run here", "the embedded model would crash here; see the fix")
    return Diagnosis("this machine", [llama_build_finding()], verdicts=verdicts)
