"""Watching the streams a Flask app serves: observers registered on the app, one per stream; metrics and traces."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Flask
from flask.sansio.blueprints import BlueprintSetupState

from kit.pipeline.observe import ObserverFactory, StreamObserver
from kit.pipeline.settings import StreamSettings

_EXTENSION = "kit.observers"


def add_observer(app: Flask, factory: ObserverFactory) -> Callable[[], None]:
    """Watch every stream the app serves from now on; returns a function that stops watching."""
    factories: list[ObserverFactory] = app.extensions.setdefault(_EXTENSION, [])
    factories.append(factory)
    return lambda: factories.remove(factory) if factory in factories else None


def observers_for(app: Flask, messages: list[dict[str, object]]) -> list[StreamObserver]:
    """One observer per registered factory, for a stream that starts now."""
    return [factory(messages) for factory in app.extensions.get(_EXTENSION, [])]


def instrument(blueprint: Blueprint, source: object, settings: StreamSettings) -> None:
    """Prometheus metrics (`metrics=True`) and OpenTelemetry traces (kit.web.tracing) for a chat's routes: each
    module is imported only when it is on, and watches streams through the app's observers."""
    watchers: list[ObserverFactory] = []
    if settings.metrics:
        from kit.web.metrics import ChatMetrics

        watchers.append(ChatMetrics(blueprint, source).observer)
    if settings.tracing is not False:
        from kit.web.tracing import ChatTracing, tracer_provider  # no OpenTelemetry import unless it is set up

        provider = tracer_provider(settings.tracing)
        if provider is not None:
            watchers.append(ChatTracing(blueprint, source, provider, settings.trace_content).observer)

    def attach(state: BlueprintSetupState) -> None:  # when the blueprint is registered on an app
        for watcher in watchers:
            add_observer(state.app, watcher)

    if watchers:
        blueprint.record_once(attach)
