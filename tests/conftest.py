"""Shared fixtures: real servers on loopback, stopped by the test that started them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from hypothesis import settings

from kit.serving.server import BackgroundServer


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], BackgroundServer]]:
    """Start apps on 127.0.0.1, each on a free port; all are stopped when the test ends."""
    servers: list[BackgroundServer] = []

    def start(app: Flask) -> BackgroundServer:
        server = BackgroundServer(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# Timing of example runs varies on a loaded 2-core CI machine; correctness, not speed, is tested here.
settings.register_profile("kit", deadline=None)
settings.load_profile("kit")
