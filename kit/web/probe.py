"""The server side of `python -m kit doctor`: a request carrying the probe header gets a known, bounded
script through the real pipeline instead of the model (paced pieces, a silence, an end marker)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kit.pipeline.cancel import CancelToken

PROBE_HEADER = "X-Kit-Probe"
PROBE_TICKS = 10
PROBE_INTERVAL_S = 0.25
DEFAULT_SILENCE_S = 8.0
# A probe holds a request thread for at most this silence plus its ticks; nobody can make it longer.
MAX_SILENCE_S = 60.0
_SIGNATURE = "kit-probe"


@dataclass(frozen=True)
class ProbePlan:
    """What the kit streams for one probe."""

    silence_s: float = DEFAULT_SILENCE_S
    ticks: int = PROBE_TICKS
    interval_s: float = PROBE_INTERVAL_S


def probe_plan(header: str | None) -> ProbePlan | None:
    """Read a probe request header (`silence=8`); None when it is absent. Values are clamped, never trusted.

    >>> probe_plan("silence=7.5")
    ProbePlan(silence_s=7.5, ticks=10, interval_s=0.25)
    >>> probe_plan("silence=1e9").silence_s, probe_plan("junk").silence_s, probe_plan(None)
    (60.0, 8.0, None)
    """
    if header is None:
        return None
    silence = DEFAULT_SILENCE_S
    for part in header.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == "silence":
            try:
                silence = float(value)
            except ValueError:
                continue
    if not 0 <= silence <= MAX_SILENCE_S:  # also refuses NaN
        silence = MAX_SILENCE_S if silence > MAX_SILENCE_S else DEFAULT_SILENCE_S
    return ProbePlan(silence_s=silence)


def probe_pieces(plan: ProbePlan, heartbeat_s: float) -> list[str]:
    """The exact text pieces of a probe, in order: a header line, the ticks, and the end marker."""
    head = f"{_SIGNATURE} heartbeat_s={heartbeat_s:g} silence_s={plan.silence_s:g}\n"
    ticks = [f"tick {index:02d}/{plan.ticks:02d}\n" for index in range(1, plan.ticks + 1)]
    return [head, *ticks, "end\n"]


def probe_script(plan: ProbePlan, heartbeat_s: float, cancel: CancelToken) -> Iterator[str]:
    """The probe as a source: paced pieces on an absolute schedule, then the silence, then the end.

    It waits on the cancel token, so a doctor that leaves early frees the thread at once.
    """
    pieces = probe_pieces(plan, heartbeat_s)
    start = time.monotonic()
    for index, piece in enumerate(pieces[:-1]):
        if cancel.wait(max(start + index * plan.interval_s - time.monotonic(), 0.0)):
            return
        yield piece
    if not cancel.wait(plan.silence_s):
        yield pieces[-1]


def probe_allowed(setting: bool | None, environ: dict[str, object]) -> bool:
    """Whether a request may run the probe: `doctor_probe=True`/`False` decides; None (the default) allows it
    except under gunicorn, the production server, unless `KIT_DOCTOR_PROBE=1` is set there.

    >>> werkzeug, gunicorn = {"SERVER_SOFTWARE": "Werkzeug/3.1"}, {"SERVER_SOFTWARE": "gunicorn/23"}
    >>> probe_allowed(None, werkzeug), probe_allowed(None, gunicorn), probe_allowed(True, gunicorn)
    (True, False, True)
    """
    if setting is not None:
        return setting
    if os.environ.get("KIT_DOCTOR_PROBE") in ("0", "1"):
        return os.environ["KIT_DOCTOR_PROBE"] == "1"
    return not str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn")
