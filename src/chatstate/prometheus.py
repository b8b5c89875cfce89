"""A store's metrics for Prometheus (the ``prometheus`` extra: prometheus-client).

::

    exporter = PrometheusExporter(store, name="chat")  # registers in prometheus_client's REGISTRY
    async with exporter:                               # refreshes every 15 s in the background
        ...                                            # serve REGISTRY as you do (/metrics)

Families (label ``store``): ``chatstate_active_sessions``, ``chatstate_history_size_avg``,
``chatstate_storage_bytes``, ``chatstate_load_latency_seconds`` and
``chatstate_save_latency_seconds`` (label ``quantile``: 0.5, 0.95, 0.99), and the counters
``chatstate_{loads,appends,saves,deletes,errors,trims,expirations,evictions}_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from chatstate._periodic import MetricsPoller
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.metrics import LatencyPercentiles

try:
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "PrometheusExporter needs prometheus-client: pip install 'chatstate[prometheus]'"
    ) from exc

__all__ = ["PrometheusExporter"]

_COUNTERS = ("loads", "appends", "saves", "deletes", "errors", "trims", "expirations", "evictions")


class PrometheusExporter(MetricsPoller, Collector):
    """Publishes ``await store.metrics()`` to a Prometheus registry.

    Prometheus collects synchronously, and a store's metrics are read asynchronously: the exporter
    serves the latest reading, taken by :meth:`refresh` (every ``interval`` inside ``async with``).
    """

    def __init__(
        self,
        store: Any,
        *,
        name: str = "default",
        registry: CollectorRegistry = REGISTRY,
        interval: timedelta = timedelta(seconds=15),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(store, interval, clock=clock)
        self.name = name
        self._registry = registry
        registry.register(self)

    def unregister(self) -> None:
        """Stop serving this store's metrics."""
        self._registry.unregister(self)

    def collect(self) -> Iterator[Metric]:
        metrics, labels = self.latest, [self.name]
        if metrics is None:
            return
        for name, value, text in (
            ("active_sessions", metrics.active_sessions, "Sessions that hold history"),
            ("history_size_avg", metrics.avg_history_size, "Messages per active session"),
            ("storage_bytes", metrics.storage_used, "Bytes the sessions take in the store"),
        ):
            gauge = GaugeMetricFamily(f"chatstate_{name}", text, labels=["store"])
            gauge.add_metric(labels, value)
            yield gauge
        for name, summary in (("load", metrics.load_latency), ("save", metrics.save_latency)):
            yield _quantiles(f"chatstate_{name}_latency_seconds", summary, self.name)
        for name in _COUNTERS:
            counter = CounterMetricFamily(
                f"chatstate_{name}", f"{name.capitalize()} so far", labels=["store"]
            )
            counter.add_metric(labels, getattr(metrics, name))
            yield counter


def _quantiles(name: str, summary: LatencyPercentiles, store: str) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(
        name, "Latency over the latest calls, by quantile", labels=["store", "quantile"]
    )
    for quantile, value in summary.quantiles():
        gauge.add_metric([store, quantile], value)
    return gauge
