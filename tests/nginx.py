"""Debian's nginx on loopback in front of a kit server, configured per test, stopped by the test.

Everything nginx writes (config, pid, logs, proxy temp files) lives in a temporary directory, so it
needs no root paths and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kit.notebook.child_server import free_port


@dataclass(frozen=True)
class ProxySettings:
    """The knobs that decide whether a proxy lets a stream through; defaults are an ordinary site config."""

    buffering: bool = True  # nginx's default: proxy_buffering on
    ignore_accel_buffering: bool = False  # `proxy_ignore_headers X-Accel-Buffering`: buffering really bites
    gzip: bool = True  # gzip on, text/event-stream among gzip_types
    hide_content_encoding: bool = False  # drop the kit's `Content-Encoding: identity`, so gzip applies
    read_timeout_s: float = 5.0


_CONFIG = """
{user}
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    {gzip}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering {buffering};
            proxy_read_timeout {read_timeout}s;
            {extra}
        }}
    }}
}}
"""

_GZIP = (
    "gzip on; gzip_proxied any; gzip_min_length 1; "
    "gzip_types text/plain text/css application/json application/javascript text/event-stream;"
)


def nginx_path() -> str:
    """Debian's nginx binary, or a RuntimeError saying how to install it."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        raise RuntimeError("nginx is not installed: run `make system-deps` or `sudo apt-get install nginx`")
    return path


class Nginx:
    """nginx in the foreground (`daemon off`), proxying 127.0.0.1:<port> to `upstream` (host:port)."""

    def __init__(self, upstream: str, settings: ProxySettings = ProxySettings()) -> None:
        self.upstream = upstream
        self.settings = settings
        self._dir = Path(tempfile.mkdtemp(prefix="kit-nginx-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _attempt in range(3):  # the free port may be taken between the probe and nginx's bind
            if self._start():
                return
        raise RuntimeError(f"nginx did not start:\n{self.error_log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def error_log(self) -> str:
        path = self._dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> str:
        settings = self.settings
        extra = []
        if settings.ignore_accel_buffering:
            extra.append("proxy_ignore_headers X-Accel-Buffering;")
        if settings.hide_content_encoding:
            extra.append("proxy_hide_header Content-Encoding;")
        return _CONFIG.format(
            # As root nginx would drop its workers to `nobody`, who cannot enter this private directory.
            user="user root;" if os.geteuid() == 0 else "",
            dir=self._dir,
            port=self.port,
            upstream=self.upstream,
            gzip=_GZIP if settings.gzip else "gzip off;",
            buffering="on" if settings.buffering else "off",
            read_timeout=f"{settings.read_timeout_s:g}",
            extra=" ".join(extra),
        )

    def restart(self) -> None:
        """Stop nginx (every connection through it is cut) and start it again on the same port."""
        self.stop()
        if not self._start(self.port):
            raise RuntimeError(f"nginx did not start again:\n{self.error_log()}")

    def switch(self, upstream: str) -> None:
        """Proxy to `upstream` from now on: a graceful reload (SIGHUP), so open connections stay where they are
        and new ones go to `upstream` once nginx's new worker has started."""
        assert self._process is not None and self._process.poll() is None, "nginx is not running"
        self.upstream = upstream
        (self._dir / "nginx.conf").write_text(self._config())
        self._process.send_signal(signal.SIGHUP)

    def _start(self, port: int = 0) -> bool:
        self.port = port or free_port()
        config = self._dir / "nginx.conf"
        config.write_text(self._config())
        command = [nginx_path(), "-p", str(self._dir), "-c", str(config), "-e", str(self._dir / "error.log")]
        self._process = subprocess.Popen(
            [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), then remove the temporary directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
