"""Alerts on metrics, and their export to Prometheus and OpenTelemetry."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable
from datetime import timedelta
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
    AlertEvent,
    AlertMonitor,
    AlertRule,
    ConfigurationError,
    InMemoryStateStore,
    Message,
    StateSaveError,
    StoreError,
)
from chatstate.otel import OpenTelemetryExporter, OpenTelemetryTracing, session_hash
from chatstate.prometheus import PrometheusExporter
from chatstate.stores import BackendStore

from .conftest import FakeClock
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


async def test_alerts_run_in_the_background_and_survive_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = InMemoryStateStore()
    await store.append("s", _turn(0))
    await store.load("s")
    calls: list[AlertEvent] = []

    async def flaky(event: AlertEvent) -> None:
        calls.append(event)
        raise RuntimeError("pager down")

    slow = AlertRule.load_p99_over(timedelta(microseconds=0))  # any load is slower than that
    never = AlertRule("never", lambda m: m.load_latency.p99, 0, below=True)
    async with AlertMonitor(store, [slow, never], flaky, interval=timedelta(milliseconds=5)):
        await asyncio.sleep(0.05)
    assert [event.rule for event in calls] == [slow]  # once, though checked about ten times
    assert "the callback failed" in caplog.text

    class Broken(InMemoryStateStore):
        async def metrics(self) -> Any:
            raise StoreError("down")

    monitor = AlertMonitor(Broken(), [slow], flaky)
    assert await monitor.check() == []
    assert "reading the metrics failed" in caplog.text


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


async def _eventually(condition: Callable[[], bool]) -> None:
    """Waits (5 s at most) until ``condition()`` holds."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


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
    read = exporter.latest
    async with exporter:  # refreshes at once, then every interval, in the background
        await _eventually(lambda: exporter.latest is not read)  # the refresh at the start
        await store.append("s3", _turn(3))
        appended = 'chatstate_appends_total{store="chat"} 4.0'
        await _eventually(lambda: appended in generate_latest(registry).decode())
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
