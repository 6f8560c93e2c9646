"""Real Jupyter servers on loopback for the notebook tests: a local JupyterLab, a "remote" JupyterLab reached
through jupyter-server-proxy, and a JupyterHub (configurable-http-proxy, dummy login, local-process spawner).

Everything runs in a temporary folder on free 127.0.0.1 ports and is stopped when its `with` block ends,
also on failure: each run tags its processes with an environment variable, and whatever still carries the
tag at the end is killed (JupyterHub starts single-user servers in sessions of their own, so one process
group would not reach them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from kit.notebook.child_server import ChildServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_word_streaming.ipynb"
ENSURE_PROXY = ROOT / "scripts" / "ensure-configurable-http-proxy.sh"
RUN_TAG = "KIT_TEST_JUPYTER_RUN"  # the environment variable that marks every process of one run


@dataclass(frozen=True)
class Jupyter:
    """A running Jupyter server as the browser meets it."""

    url: str  # the server's root, e.g. http://127.0.0.1:PORT
    home: str  # where a notebook opens in JupyterLab: `{url}{home}tree/NAME`
    token: str  # an API token for the REST API (and, without a hub, for the browser)
    log: Path  # the server's output, for whoever debugs a failure

    def lab_url(self, notebook: str) -> str:
        return f"{self.url}{self.home}lab/tree/{notebook}"


def _tagged(environ: Mapping[str, str], home: Path) -> dict[str, str]:
    # Settings, workspaces and runtime files of this run only, so a user's own JupyterLab state is neither
    # read nor changed; the tag marks the run's processes for the final sweep.
    return {
        **environ,
        RUN_TAG: str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".config"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / ".workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / ".runtime"),
    }


def _prepare_home(home: Path) -> None:
    """A home folder with a copy of notebook 01 (running cells must not rewrite the committed file) and a
    JupyterLab without its "get notified about Jupyter news?" toast over the page."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOK, home)
    news = home / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')


# No calls to the internet (closed network): no news feed, no update check.
OFFLINE_LAB = ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


def _tagged_pids(tag: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone already, or not ours to read
        if f"{RUN_TAG}={tag}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _sweep(tag: str, grace_s: float = 10.0) -> list[int]:
    """Terminate, then kill, every process still tagged with `tag`; returns the pids that had to go."""
    pids = _tagged_pids(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while _tagged_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _tagged_pids(tag):
            break
    return pids


def _stop_kernels(jupyter: Jupyter, api: str) -> None:
    # The notebook's kernel: stopped through the API, so it ends as a user's would.
    auth = {"Authorization": f"token {jupyter.token}"}
    kernels = httpx.get(f"{jupyter.url}{api}kernels", headers=auth, timeout=30)
    if kernels.status_code != 200:
        return  # no server (a hub user who never started one): nothing to stop, the sweep does the rest
    for kernel in kernels.json():
        assert httpx.delete(f"{jupyter.url}{api}kernels/{kernel['id']}", headers=auth, timeout=30).status_code == 204


@contextmanager
def jupyterlab(tmp_path: Path, environ: Mapping[str, str] | None = None) -> Iterator[Jupyter]:
    """JupyterLab, headless, on loopback with a token, serving a copy of notebook 01. `environ` adds
    variables for the server and so for its kernels (e.g. `KIT_NOTEBOOK_BASE=/`)."""
    home = tmp_path / "lab"
    _prepare_home(home)
    port, token = free_port(), secrets.token_hex(16)
    env = _tagged({**os.environ, **(environ or {})}, home)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}", *OFFLINE_LAB,
    ]  # fmt: skip
    log = tmp_path / "jupyterlab.log"
    try:
        with ChildServer(
            command, f"http://127.0.0.1:{port}", f"/api/status?token={token}", env=env, log_path=log, timeout_s=180
        ) as server:
            jupyter = Jupyter(server.url, "/", token, log)
            yield jupyter
            _stop_kernels(jupyter, "/api/")
    finally:
        _sweep(str(home))


def configurable_http_proxy() -> str:
    """The pinned configurable-http-proxy, installed by its set-up script if it is not there yet."""
    subprocess.run([str(ENSURE_PROXY)], check=True, timeout=600)
    return str(ROOT / ".node" / "node_modules" / ".bin" / "configurable-http-proxy")


@dataclass(frozen=True)
class Hub:
    """A running JupyterHub and the one user who may log in."""

    url: str  # the public URL (configurable-http-proxy)
    user: str
    password: str
    token: str  # an API token of that user, for the REST API
    log: Path

    @property
    def home(self) -> str:
        return f"/user/{self.user}/"

    def as_jupyter(self) -> Jupyter:
        return Jupyter(self.url, self.home, self.token, self.log)


HUB_CONFIG = """\
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{run}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{run}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{run}/jupyterhub.pid"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = "{run}/proxy.pid"
# One user with a shared password; no system accounts (the machine runs the test as root).
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {{{user!r}}}
# A token known in advance, for the REST API.
c.JupyterHub.api_tokens = {{{token!r}: {user!r}}}
# Single-user servers run as this process's user, in a home of the test's temporary folder.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{run}/home/{{username}}"
c.Spawner.cmd = [{python!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root", *{offline!r}]
c.Spawner.default_url = "/lab"
c.Spawner.environment = {environment!r}
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
"""


@contextmanager
def jupyterhub(tmp_path: Path, user: str = "ada") -> Iterator[Hub]:
    """JupyterHub on loopback: configurable-http-proxy in front, a dummy authenticator with one user and
    a password, and a local-process spawner whose single-user JupyterLab has jupyter-server-proxy."""
    proxy = configurable_http_proxy()
    run = tmp_path / "hub"
    home = run / "home" / user
    _prepare_home(home)
    port, password, token = free_port(), secrets.token_hex(8), secrets.token_hex(16)
    # The single-user server gets only the variables its spawner passes on: hand it this run's settings.
    user_env = _tagged({}, home)
    if "PYTHONPATH" in os.environ:  # the worktree's `kit`, when the tests run from one
        user_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    config = run / "jupyterhub_config.py"
    config.write_text(
        HUB_CONFIG.format(
            port=port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            run=run,
            proxy=proxy,
            password=password,
            user=user,
            token=token,
            python=sys.executable,
            offline=OFFLINE_LAB,
            environment=user_env,
        )
    )
    env = _tagged(os.environ, home)  # the hub and its proxy carry the tag too
    log = tmp_path / "jupyterhub.log"
    command = [sys.executable, "-m", "jupyterhub", "-f", str(config)]
    try:
        with ChildServer(
            command, f"http://127.0.0.1:{port}", "/hub/health", env=env, cwd=run, log_path=log, timeout_s=180
        ):
            hub = Hub(f"http://127.0.0.1:{port}", user, password, token, log)
            yield hub
            _stop_kernels(hub.as_jupyter(), f"{hub.home}api/")
    finally:
        _sweep(str(home))


def start_user_server(hub: Hub, timeout_s: float = 180.0) -> None:
    """Start the hub user's single-user server through the REST API (a no-op when it runs) and wait for it."""
    api = f"{hub.url}/hub/api/users/{hub.user}"
    auth = {"Authorization": f"token {hub.token}"}
    with httpx.Client(headers=auth, timeout=30) as client:
        if not client.get(api).json()["servers"]:
            assert client.post(f"{api}/server").status_code in (201, 202)
        deadline = time.monotonic() + timeout_s
        while not client.get(api).json()["servers"].get("", {}).get("ready"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{hub.user}'s server did not start within {timeout_s} s")
            time.sleep(0.5)
