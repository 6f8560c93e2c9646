"""Serve apps from a notebook: re-runnable background servers and a Deep Chat iframe widget."""

from __future__ import annotations

import functools
import html
import logging
import sys
import threading
import types
from typing import Any

from flask import Flask

from kit.notebook.browser_url import BrowserUrl, browser_url
from kit.notebook.child_server import wait_until_answering
from kit.serving.server import BackgroundServer, PortInUse

_lock = threading.Lock()
_running: dict[str, Server] = {}  # by name
# The code that started servers without a name: its key -> (the run that started them, their names).
_by_caller: dict[str, tuple[object, list[str]]] = {}

# What the iframe may use: Deep Chat's speech input needs the microphone, its copy buttons the clipboard.
IFRAME_ALLOW = "microphone; clipboard-read; clipboard-write"


class Server(BackgroundServer):
    """An app served in a daemon thread on 127.0.0.1. `url` is for Python (the kernel's loopback);
    `browser_url` is for the browser that shows the notebook. Stop it with `stop()` or a `with` block."""

    def __init__(self, app: Flask, name: str, port: int, base: str | None) -> None:
        super().__init__(app, port=port)
        self.name = name
        self._base = base

    @functools.cached_property
    def where(self) -> BrowserUrl:
        """How the browser reaches this server: `.url`, `.via` ("localhost", "proxy", "colab"), `.why`."""
        return browser_url(self.port, base=self._base)

    @property
    def browser_url(self) -> str:
        return self.where.url

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, end open streams, free the port; safe to call twice."""
        with _lock:
            if _running.get(self.name) is self:
                del _running[self.name]
        super().stop(timeout_s)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Server {self.name!r} {state} at {self.url}>"


def _quiet_request_log() -> None:
    # werkzeug writes a line per request to stderr unless its logger has a level; in a notebook those lines
    # land in whichever cell happens to run. A level someone set on purpose is kept.
    logger = logging.getLogger("werkzeug")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def serve(
    app: Flask, name: str | None = None, port: int = 0, *, base: str | None = None, timeout_s: float = 10.0
) -> Server:
    """Serve `app` in the background and return once `/healthz` answers.

    Re-running the notebook cell that called `serve` first stops the server that cell started, so a cell run
    again leaks no port and no thread, even with a fixed `port`; two cells keep two servers. An explicit
    `name` wins: serving under a name replaces the server of that name, whichever cell started it. `base` is
    the Jupyter server's base URL when the browser must go through jupyter-server-proxy (see
    `kit.notebook.browser_url`).

    >>> import httpx
    >>> from kit import create_app
    >>> with serve(create_app("Hi!", title="doctest")) as server:
    ...     httpx.get(server.url + "healthz").json()
    {'status': 'ok'}
    """
    _quiet_request_log()
    if name is None:
        name = _claim_for_caller(sys._getframe(1), str(app.config.get("KIT_TITLE") or app.name))
    else:
        _stop_named(name)
    try:
        server = Server(app, name, port, base)
    except PortInUse as error:
        holders = [other.name for other in list(_running.values()) if other.port == port]
        if holders:
            raise PortInUse(
                f"port {port} is used by the notebook server {holders[0]!r}: stop it (server.stop() or "
                "kit.notebook.stop_all()), serve under the same name, or pass port=0"
            ) from error
        raise
    try:
        wait_until_answering(server.url + "healthz", timeout_s)  # any HTTP answer means it is up
    except Exception:
        server.stop()
        raise
    with _lock:
        _running[name] = server
    return server


def _stop_named(name: str) -> None:
    with _lock:
        previous = _running.pop(name, None)
    if previous is not None:
        previous.stop()


def _claim_for_caller(frame: types.FrameType, title: str) -> str:
    """A name for a server started by this code: a cell run again first stops what its earlier run started
    (servers started in one run, say two chats side by side, stay together)."""
    caller, run = _calling_code(frame)
    with _lock:
        started_by, names = _by_caller.get(caller, (None, []))
        stale = [] if run is not None and started_by == run else names
        kept = [] if stale else names
        taken = {name for name in _running if name not in stale} | set(kept)
        name, count = title, 1
        while name in taken:
            count += 1
            name = f"{title} #{count}"
        _by_caller[caller] = (run, [*kept, name])
    for old in stale:
        _stop_named(old)
    return name


def _calling_code(frame: types.FrameType) -> tuple[str, object]:
    """What called `serve`, and which run of it: in a notebook, the cell (its id, which JupyterLab and Notebook 7
    send with each execution and which stays when the cell is edited; otherwise IPython's name for the cell's
    code) and the execution count; elsewhere, the calling line, each call a run of its own."""
    shell = _ipython()
    if shell is None:
        return f"{frame.f_code.co_filename}:{frame.f_lineno}", None
    header = getattr(shell, "parent_header", None)
    metadata = header.get("metadata") if isinstance(header, dict) else None
    cell_id = metadata.get("cellId") if isinstance(metadata, dict) else None
    cell = f"cell {cell_id}" if isinstance(cell_id, str) else frame.f_code.co_filename
    return cell, getattr(shell, "execution_count", None)


def _ipython() -> Any:
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get_ipython() if get_ipython is not None else None


def running() -> dict[str, Server]:
    """The servers started by `serve` and not stopped yet, by name."""
    with _lock:
        return dict(_running)


def stop_all() -> int:
    """Stop every server started by `serve`; returns how many were running."""
    with _lock:
        servers = list(_running.values())
    for server in servers:
        server.stop()
    return len(servers)


def _chat_html(where: BrowserUrl, height: int) -> str:
    url = html.escape(where.url, quote=True)
    return (
        f'<iframe src="{url}" allow="{IFRAME_ALLOW}" title="Deep Chat" '
        f'style="width: 100%; height: {height}px; border: 1px solid #ddd; border-radius: 6px"></iframe>'
    )


def _link_html(where: BrowserUrl) -> str:
    url = html.escape(where.url, quote=True)
    return (
        f'<a href="{url}" target="_blank" rel="noopener">Open the chat in a new tab</a> '
        f'<span style="color: #666">· {html.escape(where.url)} · via {where.via}: {html.escape(where.why)}</span>'
    )


def show(server: Server, height: int = 420, inspector: Any = None) -> Any:
    """An ipywidgets box with Deep Chat in an iframe and a link opening it in a new tab; with an
    `inspector` (kit.notebook.inspector.Inspector) its live view sits beside the chat. `box.where` says which
    URL was chosen and why; the box itself shows it in a line under the chat."""
    import ipywidgets as widgets  # imported only when a widget is first built

    where = server.where
    chat = widgets.VBox(
        [widgets.HTML(_chat_html(where, height)), widgets.HTML(_link_html(where))],
        layout=widgets.Layout(flex="1 1 50%"),
    )
    children = [chat] if inspector is None else [chat, inspector.widget()]
    box = labelled_box(children, f"ChatView(url={where.url!r}, via={where.via!r})")
    box.where = where
    return box


@functools.cache
def _labelled_box_class() -> type:
    import ipywidgets as widgets

    class LabelledBox(widgets.Box):  # type: ignore[misc]
        label = ""

        def __repr__(self) -> str:
            return self.label

    return LabelledBox


def labelled_box(children: list[Any], label: str, direction: str = "row", **layout: str) -> Any:
    """An ipywidgets Box whose text form is `label`: notebooks store that text beside the widget, and a
    short stable text (not the children's HTML with its live numbers) is what nbval can compare."""
    import ipywidgets as widgets

    layout = {"width": "100%", **layout} if direction == "row" else layout
    box = _labelled_box_class()(children, layout=widgets.Layout(display="flex", flex_flow=direction, **layout))
    box.label = label
    return box
