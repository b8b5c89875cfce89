"""Monitoring, in one namespace: what a store reports about itself, its events, and alerts on them.

- ``await store.metrics()`` returns :class:`StateMetrics`, latencies as
  :class:`LatencyPercentiles`.
- ``store.add_hook(callback)`` calls ``callback`` with a :class:`StoreEvent` as each operation
  ends (a :data:`Hook`); ``chatstate.otel.OpenTelemetryTracing`` is one, making spans.
- :class:`AlertMonitor` checks :class:`AlertRule`\\ s against the metrics and reports each
  :class:`AlertEvent` once when a rule starts and once when it stops firing.

Exporters live with their extras: ``chatstate.prometheus.PrometheusExporter`` (``prometheus``),
``chatstate.otel.OpenTelemetryExporter`` and ``OpenTelemetryTracing`` (``otel``).
"""

from chatstate.alerts import AlertEvent, AlertMonitor, AlertRule
from chatstate.metrics import WINDOW, LatencyPercentiles, StateMetrics
from chatstate.stores._events import Hook, Operation, StoreEvent

__all__ = [
    "WINDOW",
    "AlertEvent",
    "AlertMonitor",
    "AlertRule",
    "Hook",
    "LatencyPercentiles",
    "Operation",
    "StateMetrics",
    "StoreEvent",
]
