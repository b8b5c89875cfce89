"""OpenTelemetry for chatstate (the ``otel`` extra: opentelemetry-api): a store's metrics as
OpenTelemetry instruments, and a span per store call.

::

    store.add_hook(OpenTelemetryTracing())                     # a span per operation
    async with OpenTelemetryExporter(store, name="chat"):      # observable instruments
        ...

Spans carry the session id hashed (``chatstate.session.hash``: the first 16 hex digits of its
SHA-256), the number of messages, and the error if any, never a message's content. Without an
SDK configured, OpenTelemetry's API does nothing, at almost no cost.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from chatstate._periodic import MetricsPoller
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.stores._events import StoreEvent

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "chatstate.otel needs opentelemetry-api: pip install 'chatstate[otel]'"
    ) from exc

__all__ = ["OpenTelemetryExporter", "OpenTelemetryTracing", "session_hash"]

_INSTRUMENTATION = "chatstate"
_COUNTERS = ("loads", "appends", "saves", "deletes", "errors", "trims", "expirations", "evictions")


def session_hash(session_id: str) -> str:
    """What spans show of a session id: enough to follow one session, nothing to read it by."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


class OpenTelemetryTracing:
    """A store hook that records a span per operation: ``store.add_hook(OpenTelemetryTracing())``.

    Every operation of the store gets one (``chatstate.load``, ``chatstate.append``, ...,
    ``chatstate.compact``, ``chatstate.lease``: whatever method made it), timed as the operation
    ran, under the span current when it ended (a request's, in a traced web app). Attributes:
    ``chatstate.operation``, ``chatstate.session.hash``, ``chatstate.messages`` and, for a failed
    operation, ``error.type`` with an ERROR status (the message is not recorded: it may quote the
    session id).
    """

    __slots__ = ("_tracer",)

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)

    def __call__(self, event: StoreEvent) -> None:
        ended = time.time_ns()
        attributes: dict[str, Any] = {
            "chatstate.operation": event.operation,
            "chatstate.session.hash": session_hash(event.session_id),
            "chatstate.messages": event.messages,
        }
        span = self._tracer.start_span(
            f"chatstate.{event.operation}",
            attributes=attributes,
            start_time=ended - round(event.seconds * 1e9),
            record_exception=False,
        )
        if event.error is not None:
            span.set_status(Status(StatusCode.ERROR, type(event.error).__name__))
            span.set_attribute("error.type", type(event.error).__name__)
        span.end(end_time=ended)


class OpenTelemetryExporter(MetricsPoller):
    """Publishes ``await store.metrics()`` as OpenTelemetry observable instruments (attribute
    ``chatstate.store``): gauges ``chatstate.active_sessions``, ``chatstate.history_size.avg``,
    ``chatstate.storage.size`` (By), ``chatstate.load.latency`` and ``chatstate.save.latency``
    (s, attribute ``quantile``), and counters ``chatstate.loads``, ``chatstate.appends``, ...

    Observations are the latest reading, taken by :meth:`refresh` (every ``interval`` inside
    ``async with``): an SDK's reader collects synchronously, a store is read asynchronously.
    """

    def __init__(
        self,
        store: Any,
        *,
        name: str = "default",
        meter_provider: MeterProvider | None = None,
        interval: timedelta = timedelta(seconds=15),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(store, interval, clock=clock)
        self._attributes = {"chatstate.store": name}
        meter = otel_metrics.get_meter(_INSTRUMENTATION, meter_provider=meter_provider)
        gauge = meter.create_observable_gauge
        gauge("chatstate.active_sessions", [self._read("active_sessions")], unit="{session}")
        gauge("chatstate.history_size.avg", [self._read("avg_history_size")], unit="{message}")
        gauge("chatstate.storage.size", [self._read("storage_used")], unit="By")
        gauge("chatstate.load.latency", [self._latency("load_latency")], unit="s")
        gauge("chatstate.save.latency", [self._latency("save_latency")], unit="s")
        for counter in _COUNTERS:
            meter.create_observable_counter(f"chatstate.{counter}", [self._read(counter)])

    def _read(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if self.latest is not None:
                yield Observation(getattr(self.latest, field), self._attributes)

        return observe

    def _latency(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if self.latest is None:
                return
            summary = getattr(self.latest, field)
            for quantile, value in summary.quantiles():
                yield Observation(value, {**self._attributes, "quantile": quantile})

        return observe
