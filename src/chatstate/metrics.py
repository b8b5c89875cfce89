"""What a store reports about itself: :class:`StateMetrics`, from ``await store.metrics()``.

Every store answers ``metrics()``: the built-in ones and any store built on
:class:`~chatstate.stores.BackendStore` over a backend of your own. Latencies are percentiles
over a sliding window of the most recent calls (:data:`WINDOW`); counters count since the store
was made, in this process.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = ["WINDOW", "LatencyPercentiles", "StateMetrics"]

WINDOW = 1024
"""Latency percentiles are over this many most recent calls."""


@dataclass(frozen=True, slots=True)
class LatencyPercentiles:
    """Percentiles of the latency of the calls in the window, in seconds (None: no calls yet)."""

    count: int
    """Calls in the window."""
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyPercentiles:
        if not samples:
            return cls(0, None, None, None)
        ordered = sorted(samples)

        def rank(fraction: float) -> float:  # nearest rank
            return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]

        return cls(len(ordered), rank(0.50), rank(0.95), rank(0.99))

    def quantiles(self) -> list[tuple[str, float]]:
        """``[("0.5", p50), ("0.95", p95), ("0.99", p99)]``, without those not known yet."""
        known = (("0.5", self.p50), ("0.95", self.p95), ("0.99", self.p99))
        return [(quantile, value) for quantile, value in known if value is not None]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateMetrics:
    """A store's state and traffic. Each store's docs say which figures are exact and which are
    estimates (and how good)."""

    active_sessions: int
    """Sessions that hold history now."""
    avg_history_size: float
    """Messages per active session, on average."""
    storage_used: int
    """Bytes the sessions take in the store (an estimate for every built-in store)."""
    load_latency: LatencyPercentiles
    save_latency: LatencyPercentiles
    """Of appends and saves."""
    loads: int
    appends: int
    saves: int
    deletes: int
    errors: int
    """Calls that raised a store error (bad input is not counted)."""
    trims: int
    """Appends that dropped old messages to stay within ``max_messages``."""
    expirations: int
    evictions: int


class Recorder:
    """Counts calls and keeps the latency window: the one piece every store shares."""

    __slots__ = (
        "appends",
        "deletes",
        "errors",
        "load_window",
        "loads",
        "save_window",
        "saves",
        "trims",
    )

    def __init__(self) -> None:
        self.loads = self.appends = self.saves = self.deletes = 0
        self.errors = self.trims = 0
        self.load_window: deque[float] = deque(maxlen=WINDOW)
        self.save_window: deque[float] = deque(maxlen=WINDOW)

    def metrics(
        self,
        *,
        active_sessions: int,
        messages: int,
        storage_used: int,
        expirations: int,
        evictions: int,
    ) -> StateMetrics:
        """This recorder's figures with the store's own."""
        return StateMetrics(
            active_sessions=active_sessions,
            avg_history_size=messages / active_sessions if active_sessions else 0.0,
            storage_used=storage_used,
            load_latency=LatencyPercentiles.of(self.load_window),
            save_latency=LatencyPercentiles.of(self.save_window),
            loads=self.loads,
            appends=self.appends,
            saves=self.saves,
            deletes=self.deletes,
            errors=self.errors,
            trims=self.trims,
            expirations=expirations,
            evictions=evictions,
        )


clock = time.perf_counter
"""The clock latencies are read from."""
