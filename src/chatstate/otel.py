"""OpenTelemetry for chatstate (the ``otel`` extra: opentelemetry-api): a store's metrics as
OpenTelemetry instruments, and a span per store call.

::

    store = TracedStore(RedisStateStore.from_url(url))         # a span per load, append, ...
    async with OpenTelemetryExporter(store, name="chat"):      # observable instruments
        ...

Spans carry the session id hashed (``chatstate.session.hash``: the first 16 hex digits of its
SHA-256), the number of messages, and the error if any, never a message's content. Without an
SDK configured, OpenTelemetry's API does nothing, at almost no cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from chatstate._periodic import MetricsPoller
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.messages import Message
from chatstate.metrics import StoreWrapper
from chatstate.stores.base import TTL

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "chatstate.otel needs opentelemetry-api: pip install 'chatstate[otel]'"
    ) from exc

__all__ = ["OpenTelemetryExporter", "TracedStore", "session_hash"]

_INSTRUMENTATION = "chatstate"
_COUNTERS = ("loads", "appends", "saves", "deletes", "errors", "trims", "expirations", "evictions")


def session_hash(session_id: str) -> str:
    """What spans show of a session id: enough to follow one session, nothing to read it by."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


class TracedStore(StoreWrapper):
    """Any store, with a span around each ``load``, ``save``, ``append`` and ``delete``."""

    def __init__(self, store: Any, *, tracer_provider: TracerProvider | None = None) -> None:
        super().__init__(store)
        self._tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        messages: list[Message] = await self._span(
            "load", session_id, self.store.load(session_id, limit=limit), limit=limit
        )
        return messages

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        await self._span(
            "save", session_id, self.store.save(session_id, messages, ttl=ttl), count=messages
        )

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        length: int = await self._span(
            "append",
            session_id,
            self.store.append(session_id, messages, max_messages=max_messages, ttl=ttl),
            count=messages,
        )
        return length

    async def delete(self, session_id: str) -> bool:
        existed: bool = await self._span("delete", session_id, self.store.delete(session_id))
        return existed

    async def _span(
        self,
        operation: str,
        session_id: str,
        call: Awaitable[Any],
        *,
        count: Sequence[Message] | None = None,
        limit: int | None = None,
    ) -> Any:
        attributes: dict[str, Any] = {
            "chatstate.operation": operation,
            "chatstate.session.hash": session_hash(session_id)
            if isinstance(session_id, str)
            else "invalid",
        }
        if limit is not None:
            attributes["chatstate.limit"] = limit
        with self._tracer.start_as_current_span(
            f"chatstate.{operation}", attributes=attributes, record_exception=False
        ) as span:
            try:
                result = await call
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise  # the message may quote the session id: not recorded
            if isinstance(result, list):
                span.set_attribute("chatstate.messages", len(result))
            elif count is not None:
                span.set_attribute("chatstate.messages", len(count))
            return result


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
