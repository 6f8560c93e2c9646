"""Watching the streams a Flask app serves: observers registered on the app, one per stream."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from kit.pipeline.observe import ObserverFactory, StreamObserver

_EXTENSION = "kit.observers"


def add_observer(app: Flask, factory: ObserverFactory) -> Callable[[], None]:
    """Watch every stream the app serves from now on; returns a function that stops watching."""
    factories: list[ObserverFactory] = app.extensions.setdefault(_EXTENSION, [])
    factories.append(factory)
    return lambda: factories.remove(factory) if factory in factories else None


def observers_for(app: Flask, messages: list[dict[str, object]]) -> list[StreamObserver]:
    """One observer per registered factory, for a stream that starts now."""
    return [factory(messages) for factory in app.extensions.get(_EXTENSION, [])]
