"""Alerts on metrics, and their export to Prometheus and OpenTelemetry."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    Message,
    StateSaveError,
    StoreError,
)
from chatstate.monitoring import AlertEvent, AlertMonitor, AlertRule
from chatstate.otel import OpenTelemetryExporter, OpenTelemetryTracing, session_hash
from chatstate.prometheus import PrometheusExporter
from chatstate.stores import BackendStore
from chatstate.testing import FakeClock

from .dict_backend import DictBackend

SECRET = "the secret content of a message"


def _turn(index: int) -> list[Message]:
    return [Message(role="user", content=f"{SECRET} {index}")]


async def test_an_alert_fires_once_when_crossed_and_once_when_recovered() -> None:
    store = InMemoryStateStore()
    events: list[AlertEvent] = []

    async def record(event: AlertEvent) -> None:
        events.append(event)

    monitor = AlertMonitor(store, [AlertRule.active_sessions_over(3)], record)
    for index in range(5):
        await store.append(f"s{index}", _turn(index))
        await monitor.check()
    await monitor.check()
    assert [(e.firing, e.value) for e in events] == [(True, 4)]  # not once per check: no storm
    for index in range(3):
        await store.delete(f"s{index}")
        await monitor.check()
    assert [(e.firing, e.value) for e in events] == [(True, 4), (False, 3)]
    assert events[0].rule.name == "active sessions over 3" and monitor.firing == {
        "active sessions over 3": False
    }


class _Counted(InMemoryStateStore):
    """Counts the readings of its metrics."""

    readings = 0

    async def metrics(self) -> Any:
        self.readings += 1
        return await super().metrics()


async def test_alerts_run_in_the_background_and_survive_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = _Counted()
    await store.append("s", _turn(0))
    await store.load("s")
    calls: list[AlertEvent] = []

    async def flaky(event: AlertEvent) -> None:
        calls.append(event)
        raise RuntimeError("pager down")

    slow = AlertRule.load_p99_over(timedelta(microseconds=0))  # any load is slower than that
    never = AlertRule("never", lambda m: m.load_latency.p99, 0, below=True)
    interval = timedelta(seconds=15)
    async with AlertMonitor(store, [slow, never], flaky, interval=interval, clock=clock):
        await clock.sleeping()  # the first check ran at once; the next waits for the clock
        assert store.readings == 1
        clock.advance(14.9)
        assert clock.waiting == 1 and store.readings == 1  # not due yet: still asleep
        for _ in range(9):
            clock.advance(15)
            await clock.sleeping()
    assert store.readings == 10
    assert clock.waiting == 0  # the block's end stopped the checks
    assert [event.rule for event in calls] == [slow]  # once, though checked ten times
    assert calls[0].at == datetime.fromtimestamp(clock.time() - 9 * 15 - 14.9, UTC)
    assert "the callback failed" in caplog.text

    class Broken(InMemoryStateStore):
        async def metrics(self) -> Any:
            raise StoreError("down")

    monitor = AlertMonitor(Broken(), [slow], flaky)
    assert await monitor.check() == []
    assert "reading the metrics failed" in caplog.text


async def test_a_poller_runs_only_inside_its_block_and_lets_its_errors_through() -> None:
    clock = FakeClock()
    store = _Counted()
    poller = PrometheusExporter(store, registry=CollectorRegistry(), clock=clock)
    with pytest.raises(KeyError):  # the block's own error, not an ExceptionGroup
        async with poller:
            await clock.sleeping()
            raise KeyError("the application failed")
    assert clock.waiting == 0 and store.readings == 1
    async with poller:  # a poller may run again after its block
        await clock.sleeping()
        with pytest.raises(RuntimeError, match="already running"):
            await poller.__aenter__()
        await poller.aclose()  # stops it early
        assert clock.waiting == 0
    clock.advance(3600)
    assert store.readings == 2


def test_bad_alert_setups_are_rejected() -> None:
    store = InMemoryStateStore()

    async def callback(event: AlertEvent) -> None:
        pass

    with pytest.raises(ConfigurationError):
        AlertRule("", lambda m: 1, 1)
    with pytest.raises(ConfigurationError):
        AlertMonitor(store, [], callback)
    with pytest.raises(ConfigurationError, match="BackendStore"):
        AlertMonitor(object(), [AlertRule.active_sessions_over(1)], callback)


async def test_prometheus_serves_the_latest_metrics() -> None:
    store = InMemoryStateStore()
    registry = CollectorRegistry()
    exporter = PrometheusExporter(
        store, name="chat", registry=registry, interval=timedelta(milliseconds=1)
    )
    assert b"chatstate_" not in generate_latest(registry)  # nothing read yet
    for index in range(3):
        await store.append(f"s{index}", _turn(index))
    await store.load("s0")
    await exporter.refresh()
    text = generate_latest(registry).decode()
    assert 'chatstate_active_sessions{store="chat"} 3.0' in text
    assert 'chatstate_appends_total{store="chat"} 3.0' in text
    assert 'chatstate_loads_total{store="chat"} 1.0' in text
    assert 'chatstate_load_latency_seconds{quantile="0.99",store="chat"}' in text
    assert SECRET not in text
    exporter.unregister()
    assert b"chatstate_" not in generate_latest(registry)


async def test_prometheus_refreshes_every_interval_in_the_background() -> None:
    clock = FakeClock()
    store = InMemoryStateStore()
    registry = CollectorRegistry()
    exporter = PrometheusExporter(
        store, registry=registry, interval=timedelta(seconds=10), clock=clock
    )
    async with exporter:
        await clock.sleeping()  # the first refresh is done
        assert (
            'chatstate_active_sessions{store="default"} 0.0' in generate_latest(registry).decode()
        )
        await store.append("s", _turn(0))
        clock.advance(10)
        await clock.sleeping()
        assert (
            'chatstate_active_sessions{store="default"} 1.0' in generate_latest(registry).decode()
        )
    exporter.unregister()
    assert b"chatstate_" not in generate_latest(registry)


async def test_spans_show_the_session_hashed_and_never_the_content() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    store = InMemoryStateStore()
    store.add_hook(OpenTelemetryTracing(tracer_provider=provider))
    with tracer.start_as_current_span("request") as request:
        await store.append("user-42", _turn(0))
        assert await store.load_with_summary("user-42", limit=5) == (_turn(0), None)
    assert await store.delete("user-42")
    async with store.lease("user-42", ttl=5, timeout=1):
        pass
    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == [
        "chatstate.append",
        "chatstate.load",
        "request",
        "chatstate.delete",
        "chatstate.lease",
    ]
    for span in finished[:2]:  # under the span current when the operation ran
        assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
    for span in [*finished[:2], *finished[3:]]:
        assert span.attributes is not None
        assert span.attributes["chatstate.session.hash"] == session_hash("user-42")
        assert span.start_time is not None and span.end_time is not None
        assert 0 < span.end_time - span.start_time < 1e9
        shown = repr(dict(span.attributes)) + repr(span.events) + str(span.status.description)
        assert "user-42" not in shown and SECRET not in shown
    assert finished[1].attributes["chatstate.messages"] == 1  # type: ignore[index]


async def test_a_failed_operation_is_an_error_span(clock: FakeClock) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))

    class Down(DictBackend):
        async def append(self, session_id: str, entries: Any, **options: Any) -> Any:
            raise ConnectionError("refused")

        def error_kind(self, exc: Exception) -> Any:
            return "unavailable"

    store = BackendStore(Down(clock), hooks=[OpenTelemetryTracing(tracer_provider=provider)])
    with pytest.raises(StateSaveError):
        await store.append("user-42", _turn(0))
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "ConnectionError"
    assert "refused" not in repr(span.status.description)


async def test_opentelemetry_observes_the_latest_metrics() -> None:
    reader = InMemoryMetricReader()
    store = InMemoryStateStore()
    exporter = OpenTelemetryExporter(
        store, name="chat", meter_provider=MeterProvider(metric_readers=[reader])
    )
    await store.append("s", _turn(0))
    await store.load("s")
    await exporter.refresh()
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    assert points["chatstate.active_sessions"][0].value == 1
    assert points["chatstate.appends"][0].value == 1
    assert points["chatstate.active_sessions"][0].attributes == {"chatstate.store": "chat"}
    quantiles = {point.attributes["quantile"] for point in points["chatstate.load.latency"]}
    assert quantiles == {"0.5", "0.95", "0.99"}


@pytest.mark.parametrize(
    ("module", "missing"),
    [("chatstate.prometheus", "prometheus_client"), ("chatstate.otel", "opentelemetry")],
)
def test_the_optional_exporters_need_their_extras(
    module: str, missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, module)
    for name in [name for name in sys.modules if name.split(".")[0] == missing]:
        monkeypatch.setitem(sys.modules, name, None)  # `import missing...` fails
    with pytest.raises(ImportError, match=r"pip install 'chatstate\[(prometheus|otel)\]'"):
        importlib.import_module(module)
