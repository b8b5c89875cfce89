"""Alerts on a store's metrics: rules checked periodically, a callback once when a rule starts
firing and once when it recovers (never on every check while it fires: no alert storm)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chatstate._periodic import MetricsPoller
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.errors import ConfigurationError
from chatstate.metrics import StateMetrics

__all__ = ["AlertEvent", "AlertMonitor", "AlertRule"]

logger = logging.getLogger("chatstate.alerts")


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Fires while ``value(metrics)`` is over ``threshold`` (``below=True``: under it).

    ``AlertRule("sessions", lambda m: m.active_sessions, 10_000)``, or the ready-made
    :meth:`active_sessions_over` and :meth:`load_p99_over`. A value of None (no data yet) never
    fires.
    """

    name: str
    value: Callable[[StateMetrics], float | None] = field(repr=False)
    threshold: float
    below: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"an alert rule needs a name, got {self.name!r}")
        if not callable(self.value):
            raise ConfigurationError(f"value must be a function of StateMetrics: {self.value!r}")

    @classmethod
    def active_sessions_over(cls, count: int) -> AlertRule:
        return cls(f"active sessions over {count:,}", lambda m: m.active_sessions, count)

    @classmethod
    def load_p99_over(cls, limit: timedelta) -> AlertRule:
        seconds = limit.total_seconds()
        return cls(f"load p99 over {seconds * 1000:g} ms", lambda m: m.load_latency.p99, seconds)

    def firing(self, metrics: StateMetrics) -> tuple[bool, float | None]:
        value = self.value(metrics)
        if value is None:
            return False, None
        return (value < self.threshold if self.below else value > self.threshold), value


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A rule started firing (``firing=True``) or recovered."""

    rule: AlertRule
    firing: bool
    value: float | None
    at: datetime


Callback = Callable[[AlertEvent], Awaitable[Any]]


class AlertMonitor(MetricsPoller):
    """Checks ``rules`` against ``await store.metrics()`` every ``interval`` and awaits
    ``callback(event)`` when a rule starts firing and when it recovers.

    ``async with AlertMonitor(store, rules, callback):`` runs the checks in a task group of its
    own, the first at once; :meth:`check` runs one now. ``clock`` measures the interval and
    stamps the events (a :class:`~chatstate.testing.FakeClock` in tests). A failing
    ``metrics()`` or callback is logged and the checks go on; the rules keep their state.
    """

    def __init__(
        self,
        store: Any,
        rules: Sequence[AlertRule],
        callback: Callback,
        *,
        interval: timedelta = timedelta(seconds=15),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(store, interval, clock=clock)
        if not rules or not all(isinstance(rule, AlertRule) for rule in rules):
            raise ConfigurationError("rules must be a non-empty sequence of AlertRule")
        if not callable(callback):
            raise ConfigurationError(f"callback must be an async function, got {callback!r}")
        self.rules = tuple(rules)
        self.callback = callback
        self.firing: dict[str, bool] = {rule.name: False for rule in self.rules}
        """Each rule's state now."""

    async def check(self) -> list[AlertEvent]:
        """Check every rule once; returns (and calls back with) the changes of state."""
        try:
            metrics = await self.refresh()
        except Exception as exc:
            logger.warning("alerts: reading the metrics failed: %s: %s", type(exc).__name__, exc)
            return []
        events = []
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        for rule in self.rules:
            firing, value = rule.firing(metrics)
            if firing != self.firing[rule.name]:
                self.firing[rule.name] = firing
                events.append(AlertEvent(rule, firing, value, now))
        for event in events:
            try:
                await self.callback(event)
            except Exception:
                logger.exception("alerts: the callback failed for %r", event.rule.name)
        return events

    async def tick(self) -> None:
        await self.check()
