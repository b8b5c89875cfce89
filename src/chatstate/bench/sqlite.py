"""The SQLite suite: SQLiteStateStore beside the same SQL written by hand with plain sqlite3.

Each side has a database file of its own in a temporary directory (removed at the end), in WAL
mode with ``synchronous=NORMAL``, and runs every operation as one job on a one-thread executor,
as the store does: the ratio is what the store adds, not the thread hop or SQLite itself. Beside
them in the same rounds run the in-memory store and, when the run has a server, the Redis store,
on the same workload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from chatstate.bench import scenarios
from chatstate.bench.measure import ConcurrentFigures, Progress, compare_concurrent
from chatstate.bench.options import BenchOptions
from chatstate.bench.results import (
    Measured,
    PlanItem,
    Row,
    SideMetric,
    concurrent_details,
    side_rows,
)
from chatstate.bench.scenarios import Scenario
from chatstate.bench.workload import Backend, Floor
from chatstate.messages import Message
from chatstate.stores.base import StateStore
from chatstate.stores.memory import InMemoryStateStore
from chatstate.stores.sqlite import SQLiteStateStore

FAILURES: tuple[type[Exception], ...] = (sqlite3.Error,)
"""What the floor may raise (the store raises ChatStateError)."""

MIN_TURNS_PER_ROUND = 1000
"""A full run's rounds run at least this many turns in all (at 1 session, this many in sequence):
a round of 20 turns of a few tens of microseconds would be too short to time."""

IN_MEMORY = "in-memory store"
REDIS = "Redis store"

_T = TypeVar("_T")

_FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID
"""


class HandWrittenSQLiteFloor(Floor[Message]):
    """The floor: what a careful user writes by hand with sqlite3, each operation one job on a
    thread of its own: a SELECT of the newest ``limit`` rows to load; BEGIN IMMEDIATE, INSERT,
    a DELETE of what the bound trims and COMMIT to append. One table keyed by (session, seq), the
    same JSON (de)serialisation of messages. It keeps no expiry, no version and no session row:
    ours pays for those, the floor does not."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="chatstate-bench-sqlite")
        self._connection: sqlite3.Connection | None = None

    async def _run(self, job: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(job, *args))

    async def open(self) -> None:
        await self._run(self._connect)

    async def aclose(self) -> None:
        await self._run(self._disconnect)
        self._executor.shutdown(wait=True)

    def _connect(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(_FLOOR_SCHEMA)
        self._connection = connection

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("the floor's database is not open")
        return self._connection

    def _load_job(self, session_id: str, limit: int | None) -> list[bytes]:
        if not limit:
            rows = self._db().execute(
                "SELECT entry FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            )
            return [entry for (entry,) in rows]
        newest = self._db().execute(
            "SELECT entry FROM messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
            (session_id, limit),
        )
        return [entry for (entry,) in reversed(newest.fetchall())]

    def _append_job(self, session_id: str, entries: list[bytes], keep: int | None) -> int:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            (last,) = db.execute(
                "SELECT max(seq) FROM messages WHERE session_id = ?", (session_id,)
            ).fetchone()
            first = 0 if last is None else last + 1
            db.executemany(
                "INSERT INTO messages (session_id, seq, entry) VALUES (?, ?, ?)",
                [(session_id, first + index, entry) for index, entry in enumerate(entries)],
            )
            total = first + len(entries)  # seqs start at 0, and only the oldest are trimmed
            if keep is not None and total > keep:
                db.execute(
                    "DELETE FROM messages WHERE session_id = ? AND seq < ?",
                    (session_id, total - keep),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return total if keep is None else min(total, keep)

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        entries = await self._run(self._load_job, session_id, limit)
        return [Message.model_validate_json(entry) for entry in entries]

    async def _append(
        self, session_id: str, messages: Sequence[Message], keep: int | None, ttl: float | None
    ) -> int:
        entries = [message.model_dump_json().encode() for message in messages]
        return await self._run(self._append_job, session_id, entries, keep)


@dataclass(slots=True)
class SQLiteBench:
    """The store and the floor of one run, each on a file of its own in a temporary directory,
    and an in-memory store to run beside them."""

    directory: Path
    ours: SQLiteStateStore
    floor: HandWrittenSQLiteFloor
    memory: InMemoryStateStore

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls) -> AsyncIterator[SQLiteBench]:
        """Create the files; at the end close both sides and remove the directory."""
        with tempfile.TemporaryDirectory(prefix="chatstate-bench-sqlite-") as name:
            directory = Path(name)
            floor = HandWrittenSQLiteFloor(str(directory / "floor.db"))
            async with (
                SQLiteStateStore(directory / "ours.db") as ours,
                InMemoryStateStore(max_sessions=None) as memory,
            ):
                await floor.open()
                try:
                    yield cls(directory, ours, floor, memory)
                finally:
                    await floor.aclose()


def plan(
    bench: SQLiteBench, options: BenchOptions, *, redis: StateStore | None = None
) -> list[PlanItem]:
    """The SQLite scenarios at each of :data:`~chatstate.bench.scenarios.SQLITE_SESSIONS`
    concurrent sessions; ``redis``: a Redis store to run beside them."""

    def item(scenario: Scenario, sessions: int) -> PlanItem:
        return PlanItem(
            group="sqlite",
            key=f"{scenario.key}@{sessions}",
            name=f"sqlite: {scenario.describe(options)}, {sessions:,} sessions",
            run=lambda progress: run_scenario(bench, scenario, sessions, options, progress, redis),
        )

    return [
        item(scenario, sessions)
        for scenario in scenarios.SQLITE
        for sessions in scenarios.SQLITE_SESSIONS
    ]


def turns_per_session(sessions: int, options: BenchOptions) -> int:
    """``options.turns``, or more in a full run: at least :data:`MIN_TURNS_PER_ROUND` in all."""
    if options.quick:
        return options.turns
    return max(options.turns, -(-MIN_TURNS_PER_ROUND // sessions))


async def run_scenario(
    bench: SQLiteBench,
    scenario: Scenario,
    sessions: int,
    options: BenchOptions,
    progress: Progress,
    redis: StateStore | None = None,
) -> Measured:
    """Seed, then alternate rounds of ours, the other stores and the floor, all sessions at once
    (``asyncio.gather``), as the Redis suite runs them."""
    params = scenario.params(options, fresh=True)
    ids = [f"sqlite-{scenario.key}{sessions}-{index}" for index in range(sessions)]
    others: dict[str, StateStore] = {IN_MEMORY: bench.memory}
    if redis is not None:
        others[REDIS] = redis
    sides = {
        "ours": scenario.ours(bench.ours, params),
        **{name: scenario.ours(store, params) for name, store in others.items()},
        "floor": scenario.floor(bench.floor, params),
    }
    backends: list[Backend] = [bench.ours, *others.values(), bench.floor]
    progress.detail("seeding")
    await scenarios.seed(backends, ids, scenario.seed_count(options), params)
    turns = turns_per_session(sessions, options)
    figures = await compare_concurrent(
        sides, ids, turns=turns, rounds=options.repeats, round_trips=lambda: 0, progress=progress
    )
    details = concurrent_details(sessions, turns, figures)
    return Measured(_rows(scenario, sessions, options, figures), details)


_Metric = tuple[str, str, Callable[[ConcurrentFigures], float]]


def _throughput(figures: ConcurrentFigures) -> float:
    return figures.turns_per_s


def _latency(step: str, percentile: str) -> _Metric:
    return (
        f"{step} {percentile}",
        "µs",
        lambda figures: figures.latency_ms[step][percentile] * 1000,
    )


def side_metrics(scenario: Scenario, side: str) -> list[_Metric]:
    """Throughput and latency: p50 and p99 of a load or an append, p50 of both steps of a turn;
    the stores beside ours show throughput and the first p50."""
    throughput: _Metric = ("throughput", scenario.unit, _throughput)
    if scenario is scenarios.TURN:
        metrics = [throughput, _latency("load", "p50"), _latency("append", "p50")]
    else:
        step = "load" if scenario is scenarios.LOAD else "append"
        metrics = [throughput, _latency(step, "p50"), _latency(step, "p99")]
    return metrics if side == "ours" else metrics[:2]


def _rows(
    scenario: Scenario, sessions: int, options: BenchOptions, figures: dict[str, ConcurrentFigures]
) -> list[Row]:
    """Each side's figures beside the floor's (the in-memory and Redis stores too: the ratio then
    compares them with the same SQL by hand)."""

    def metrics(side: str) -> list[SideMetric]:
        return [(metric, unit, pick, None) for metric, unit, pick in side_metrics(scenario, side)]

    return side_rows("sqlite", scenario, sessions, options, figures, metrics)


def latency_notes(rows: Sequence[Row], options: BenchOptions) -> list[str]:
    """Per level of sessions, the p50 latency of a load and of an append on SQLite, beside the
    other stores of the same rounds."""
    notes = []
    for sessions in scenarios.SQLITE_SESSIONS:
        parts = []
        for scenario, what in (
            (scenarios.LOAD, f"load(limit={options.history})"),
            (scenarios.APPEND, "append 2"),
        ):
            found = {
                row.variant: row
                for row in rows
                if row.group == "sqlite"
                and row.key == scenario.key
                and row.sessions == sessions
                and row.metric.endswith(" p50")
            }
            ours = found.get("")
            if ours is None:
                continue
            beside = [
                f"{name} {_us(found[name].ours)}" for name in (IN_MEMORY, REDIS) if name in found
            ]
            parts.append(
                f"{what} p50 {_us(ours.ours)} (by hand {_us(ours.floor)}"
                + "".join(f"; {text}" for text in beside)
                + ")"
            )
        if parts:
            label = f"{sessions:,} session{'s' if sessions != 1 else ''}"
            notes.append(f"sqlite, {label}: " + ", ".join(parts))
    return notes


def _us(value: float) -> str:
    return f"{value:,.0f} µs" if value >= 100 else f"{value:.3g} µs"
