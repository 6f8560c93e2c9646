"""A throwaway PostgreSQL cluster for tests: Debian's initdb and pg_ctl in a temporary directory, bound to
127.0.0.1 on a free port, run as the unprivileged `postgres` user when the tests run as root, removed after.

`postgres_cluster` is the session fixture; a test module imports it to use it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.notebook.child_server import free_port


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory, or a RuntimeError saying how to install it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make system-deps` or `sudo apt-get install postgresql`")
    return Path(found[-1]).parent


class PostgresCluster:
    """initdb + pg_ctl start on a free loopback port; `url` for the kit; `stop()`/`start()` to take it down and
    bring it back with its data (a store that is down); `remove()` at the end."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="kit-postgres-"))
        self.data = self.dir / "data"
        self.port = 0
        # PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user Debian's package made.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "kit", "-E", "UTF8", "--locale=C", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as, str(self.bin / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}\n{result.stderr}\n{self.log_tail()}")

    def start(self) -> None:
        """Start (or restart) the cluster; a new free port the first time, the same one after."""
        self.port = self.port or free_port()
        # A throwaway cluster: no fsync, a socket directory of its own, loopback only.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop the server now (the data stays), as an outage would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://kit@127.0.0.1:{self.port}/postgres"

    def log_tail(self, lines: int = 20) -> str:
        path = self.dir / "log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_url(option: str | None) -> Iterator[str | None]:
    """A benchmark's `--postgres` option as a URL: `auto` is a throwaway cluster for the block, None is none."""
    if option != "auto":
        yield option
        return
    cluster = PostgresCluster()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the test session, stopped and removed after."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()
