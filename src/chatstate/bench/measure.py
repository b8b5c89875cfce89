"""How the suites measure: every side of a comparison runs the same workload in alternating rounds
(ours, floor, ours, floor, ...), so a noisy machine moves both sides alike."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from chatstate.bench.workload import Workload

_Sample = TypeVar("_Sample")


class Progress(Protocol):
    """Told what is running, for a progress display."""

    def begin(self, total: int) -> None:
        """The run has ``total`` scenarios."""

    def scenario(self, name: str) -> None:
        """A scenario starts; the one before it is done."""

    def detail(self, text: str) -> None:
        """What the current scenario is doing now."""


class NoProgress:
    """Shows nothing."""

    def begin(self, total: int) -> None:
        pass

    def scenario(self, name: str) -> None:
        pass

    def detail(self, text: str) -> None:
        pass


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest sample with ``fraction`` of all at or below it."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# In-process: batches -------------------------------------------------------------------------


async def _batch(workload: Workload, session_ids: Sequence[str], turns: int) -> float:
    steps = [step for _, step in workload.steps]
    count = len(session_ids)
    started = time.perf_counter_ns()
    for index in range(turns):
        session_id = session_ids[index % count]
        for step in steps:
            await step(session_id)
    return (time.perf_counter_ns() - started) / turns / 1000


@dataclass(frozen=True, slots=True)
class BatchFigures:
    """Microseconds per turn of one side: the median over rounds, and every round's figure."""

    us_per_turn: float
    rounds: list[float]


async def compare_batches(
    sides: Mapping[str, Workload],
    session_ids: Sequence[str],
    *,
    turns: int,
    rounds: int,
    progress: Progress,
) -> dict[str, BatchFigures]:
    """Time ``turns`` turns per round, cycling through ``session_ids``, for each side in turn.

    For operations of a microsecond, a clock read around each one would cost as much as the
    operation: a batch is timed as a whole, and its mean per turn is one sample.
    """
    samples = await _alternate(
        sides,
        lambda workload, count: _batch(workload, session_ids, count),
        turns=turns,
        warm_up_turns=min(turns, 1000),  # caches, first allocations, lazy imports
        rounds=rounds,
        progress=progress,
    )
    return {
        name: BatchFigures(statistics.median(values), values) for name, values in samples.items()
    }


async def _alternate(
    sides: Mapping[str, Workload],
    measure: Callable[[Workload, int], Awaitable[_Sample]],
    *,
    turns: int,
    warm_up_turns: int,
    rounds: int,
    progress: Progress,
) -> dict[str, list[_Sample]]:
    """One untimed warm-up per side, then ``rounds`` rounds of every side in turn (ours, floor,
    ours, floor, ...): a machine that slows down for a while slows both sides down."""
    for name, workload in sides.items():
        progress.detail(f"warm-up, {name}")
        await measure(workload, warm_up_turns)
    samples: dict[str, list[_Sample]] = {name: [] for name in sides}
    for round_number in range(1, rounds + 1):
        for name, workload in sides.items():
            progress.detail(f"round {round_number}/{rounds}, {name}")
            samples[name].append(await measure(workload, turns))
    return samples


# Concurrent: asyncio.gather of sessions -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Round:
    elapsed: float
    turns: int
    ops: int
    round_trips: int
    latencies: dict[str, list[float]]


async def _concurrent_round(
    workload: Workload,
    session_ids: Sequence[str],
    turns: int,
    round_trips: Callable[[], int],
) -> _Round:
    latencies: dict[str, list[float]] = {name: [] for name, _ in workload.steps}
    clock = time.perf_counter

    async def session(session_id: str) -> None:
        for _ in range(turns):
            for name, step in workload.steps:
                started = clock()
                await step(session_id)
                latencies[name].append(clock() - started)

    sent = round_trips()
    started = clock()
    await asyncio.gather(*(session(session_id) for session_id in session_ids))
    elapsed = clock() - started
    total = len(session_ids) * turns
    return _Round(elapsed, total, total * len(workload.steps), round_trips() - sent, latencies)


@dataclass(frozen=True, slots=True)
class ConcurrentFigures:
    """One side of a concurrent comparison.

    Throughputs are medians over rounds; latency percentiles pool the samples of every round.
    """

    turns_per_s: float
    ops_per_s: float
    round_trips_per_op: float
    latency_ms: dict[str, dict[str, float]]
    """Per step name: ``p50`` and ``p99`` in milliseconds."""
    rounds_turns_per_s: list[float]

    @classmethod
    def of(cls, rounds: Sequence[_Round]) -> ConcurrentFigures:
        pooled: dict[str, list[float]] = {}
        for one in rounds:
            for name, values in one.latencies.items():
                pooled.setdefault(name, []).extend(values)
        return cls(
            turns_per_s=statistics.median(one.turns / one.elapsed for one in rounds),
            ops_per_s=statistics.median(one.ops / one.elapsed for one in rounds),
            round_trips_per_op=sum(one.round_trips for one in rounds)
            / sum(one.ops for one in rounds),
            latency_ms={
                name: {
                    "p50": percentile(values, 0.50) * 1000,
                    "p99": percentile(values, 0.99) * 1000,
                }
                for name, values in pooled.items()
            },
            rounds_turns_per_s=[one.turns / one.elapsed for one in rounds],
        )


async def compare_concurrent(
    sides: Mapping[str, Workload],
    session_ids: Sequence[str],
    *,
    turns: int,
    rounds: int,
    round_trips: Callable[[], int],
    progress: Progress,
) -> dict[str, ConcurrentFigures]:
    """Run every session at once (``asyncio.gather``), each ``turns`` turns in sequence, for each
    side in turn, ``rounds`` times. ``round_trips`` reads a counter of writes to the server.

    One untimed turn per session and side comes first: it opens the pool's connections and loads
    the server-side scripts, which a long-running app has long done.
    """
    measured = await _alternate(
        sides,
        lambda workload, count: _concurrent_round(workload, session_ids, count, round_trips),
        turns=turns,
        warm_up_turns=1,
        rounds=rounds,
        progress=progress,
    )
    return {name: ConcurrentFigures.of(values) for name, values in measured.items()}
