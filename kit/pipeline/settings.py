"""The chat's settings: one typed, validated object that the web app and the pipeline both read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kit.pipeline.coalesce import DEFAULT_COALESCE_MS, Coalescer
from kit.pipeline.files import DEFAULT_FILE_TYPES, FileLimits
from kit.pipeline.granularity import splitter
from kit.pipeline.thinking import check_mode

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DOUBLE_SEND = ("reject", "enqueue", "interrupt")


@dataclass(frozen=True)
class StreamSettings:
    """How a chat's replies are cut, merged, kept alive and served. Every keyword of `create_app` and
    `create_blueprint` is a field here; the defaults come from measurements (docs/benchmarks.md).

    >>> StreamSettings(granularity="word").with_options(heartbeat_s=5).heartbeat_s
    5
    >>> StreamSettings(granularity="line")
    Traceback (most recent call last):
    ValueError: granularity must be one of ('word', 'char', 'chunk'), not 'line'
    """

    # -- how the reply is cut and sent -------------------------------------------------------------------
    granularity: str = "chunk"
    # One event per display frame (60 Hz) at most: one event per character made Deep Chat re-render its
    # markdown thousands of times a second (docs/benchmarks.md, "Coalescing"). A piece after a quiet spell
    # still goes out at once, so slow sources pay no latency at all.
    coalesce_ms: float = DEFAULT_COALESCE_MS
    # Caps one event's text so a huge burst still arrives in several visible steps.
    max_event_chars: int = 2048
    # Under the 5 s read timeout of a cautious proxy (and nginx's 60 s default) with margin; 7 bytes a beat.
    heartbeat_s: float = 2.0
    # How often an idle stream checks whether the client left (Stop button, closed tab).
    disconnect_poll_s: float = 0.25
    queue_size: int = 256
    # A client that reads nothing for this long is treated as gone (the source is cancelled).
    stall_timeout_s: float = 30.0
    # Model output is untrusted: `javascript:` and similar link schemes are rewritten (kit.pipeline.sanitize).
    neutralize_links: bool = True
    # A reasoning model's thinking (kit.pipeline.thinking, docs/reasoning.md): "show" in a bubble of its own,
    # "hide" (never sent; heartbeats go on), or "inline" (quoted at the top of the answer's bubble).
    thinking: str = "show"
    # -- what the source sees --------------------------------------------------------------------------
    system_prompt: str | None = None
    # -- how the routes are served ---------------------------------------------------------------------------
    allowed_origins: Sequence[str] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # `python -m kit doctor`'s probe header: None turns it on except under gunicorn (production), where any
    # client could otherwise hold a request thread for a minute outside the model's queue.
    doctor_probe: bool | None = None
    # -- attached files (kit.pipeline.files, docs/sources.md "Files in the chat") ------------------------------
    max_file_bytes: int = 2 * 1024 * 1024
    max_files_bytes: int = 4 * 1024 * 1024  # all the files of one message together
    file_types: Sequence[str] = DEFAULT_FILE_TYPES  # media types, "text/*" patterns allowed
    max_pdf_pages: int = 200  # a longer PDF is read this far, and the source is told so
    title: str = "Deep Chat streaming kit"
    # -- observability (docs/production.md, "Metrics, traces and token usage") ------------------------------
    # `GET /metrics` in Prometheus' format (needs prometheus_client, in the `prod` extra); `kit serve --prod` on.
    metrics: bool = False
    # OpenTelemetry spans per reply (kit.web.tracing): None when opentelemetry-sdk is set up in the process or by
    # the OTEL_* environment, False off, True on, or the TracerProvider to use. Prompts and answers only with
    # `trace_content` (they may hold personal data).
    tracing: Any = None
    trace_content: bool = False
    # -- threads (kit.web.threads) -------------------------------------------------------------------
    # Where conversations live: None for kit-threads.sqlite in the working directory, a path, a postgresql://
    # URL, a kit.threads.store.ThreadStore, or False for none.
    thread_store: Any = None
    # Called during a request: the signed-in user's id (or None); binds each thread to its first user.
    thread_owner: Callable[[], str | None] | None = None
    # A second send on a thread while a reply runs there (two tabs, an impatient client): "reject" (a 409 JSON
    # error the page shows), "enqueue" (waits for the running reply, then runs) or "interrupt" (stops it, then
    # runs); a send that waited `double_send_wait_s` in vain is refused too (kit.web.runs).
    double_send: str = "reject"
    double_send_wait_s: float = 60.0
    # A dropped connection (a reload, a network cut) is not a Stop: "continue" keeps the reply going, for a page
    # that rejoins it, until nobody has read it for `on_disconnect_limit_s`; "cancel" stops it at once (for
    # clients without a Stop of their own). The page's Stop always stops it. Each reply on a thread is a run
    # whose event log stays in the thread store `run_log_keep_s` after it ends (kit.web.rejoin).
    on_disconnect: str = "continue"
    on_disconnect_limit_s: float = 120.0
    run_log_keep_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        splitter(self.granularity)  # raises ValueError naming the valid choices
        check_mode(self.thinking)
        Coalescer(self.coalesce_ms / 1000, self.max_event_chars)  # validates both
        if self.heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be positive, not {self.heartbeat_s}")
        if self.queue_size < 1 or self.stall_timeout_s <= 0 or self.disconnect_poll_s <= 0:
            raise ValueError("queue_size, stall_timeout_s and disconnect_poll_s must be positive")
        if self.double_send not in DOUBLE_SEND:
            raise ValueError(f"double_send must be one of {DOUBLE_SEND}, not {self.double_send!r}")
        if self.on_disconnect not in ("continue", "cancel"):
            raise ValueError(f"on_disconnect must be 'continue' or 'cancel', not {self.on_disconnect!r}")
        if self.on_disconnect_limit_s <= 0 or self.run_log_keep_s < 0:
            raise ValueError("on_disconnect_limit_s must be positive and run_log_keep_s 0 or more")
        if self.double_send_wait_s < 0:
            raise ValueError(f"double_send_wait_s must be 0 or more, not {self.double_send_wait_s}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, not {self.max_body_bytes}")
        object.__setattr__(self, "file_types", tuple(self.file_types))
        _ = self.file_limits  # validates the file fields (ValueError)

    @property
    def file_limits(self) -> FileLimits:
        """What the chat reads of attached files."""
        return FileLimits(
            self.max_file_bytes, self.max_files_bytes, types=self.file_types, max_pdf_pages=self.max_pdf_pages
        )

    def with_options(self, **options: Any) -> StreamSettings:
        """A copy with some fields changed; an unknown name is a TypeError listing the valid ones."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; the options are: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **options)
