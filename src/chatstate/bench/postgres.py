"""The PostgreSQL suite: PostgresStateStore beside the same SQL written by hand with asyncpg.

Both sides run on the same server, each on a pool of its own of the same size (asyncpg pools
without the reset query on release, which would add a round trip to every call of either), in a
schema of its own that the run creates and drops. The floor is what a careful user writes with
one statement per step; ours runs each call as one statement. Every write to the server is
counted at the connection (round trips per operation). The in-memory store runs beside them in
the same rounds.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from chatstate.bench import scenarios
from chatstate.bench.measure import ConcurrentFigures, Progress, compare_concurrent
from chatstate.bench.options import BenchError, BenchOptions
from chatstate.bench.results import (
    Measured,
    PlanItem,
    Row,
    SideMetric,
    Target,
    concurrent_details,
    side_rows,
)
from chatstate.bench.scenarios import Scenario
from chatstate.bench.sqlite import IN_MEMORY, side_metrics, turns_per_session
from chatstate.bench.workload import Backend, Floor
from chatstate.messages import Message
from chatstate.stores.memory import InMemoryStateStore
from chatstate.stores.postgres import PostgresStateStore, no_reset

__all__ = ["FAILURES", "CountingConnection", "HandWrittenPostgresFloor", "PostgresBench", "plan"]

FAILURES: tuple[type[Exception], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)
"""What the floor may raise (the store raises ChatStateError)."""

POOL_SIZE = 40
"""Connections of each side's pool."""

TURN_ONE_SESSION = Target.ratio_at_least(1.0)
TURN_CONCURRENT = Target.ratio_at_least(2.0)
"""The Postgres turn at 100 sessions: at least twice the floor's throughput."""


class CountingConnection(asyncpg.Connection):
    """An asyncpg connection that counts its writes to the server in the class's ``writes``:
    asyncpg sends each exchange (a statement's Bind, Execute and Sync; its Parse the first time)
    in one write and then waits for the answer, so a write is a round trip."""

    writes = 0

    def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, transport, *args, **kwargs)
        write = transport.write
        counter = type(self)

        def counted(data: bytes) -> None:
            counter.writes += 1
            write(data)

        transport.write = counted


def _pool_options(counter: type[CountingConnection]) -> dict[str, Any]:
    return {
        "min_size": 1,
        "max_size": POOL_SIZE,
        "reset": no_reset,
        "connection_class": counter,
    }


class HandWrittenPostgresFloor(Floor[Message]):
    """The floor: what a careful user writes by hand with asyncpg, one statement per step. A
    load is a SELECT of the newest ``limit`` rows; an append, in a transaction, BEGIN, a SELECT of
    the last number, the INSERT of the turn, a DELETE of what the bound trims and COMMIT (five
    round trips). One table keyed by (session, seq), the same JSON of messages; no expiry, no
    version and no session row: ours pays for those, the floor does not."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.table = f"{schema}.messages"

    async def create(self) -> None:
        await self.pool.execute(
            f"CREATE TABLE {self.table} (session_id text NOT NULL, seq bigint NOT NULL, "
            "entry bytea NOT NULL, PRIMARY KEY (session_id, seq))"
        )

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        query = f"SELECT entry FROM {self.table} WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(query, session_id, limit)
        return [Message.model_validate_json(entry) for (entry,) in reversed(rows)]

    async def _append(
        self, session_id: str, messages: Sequence[Message], keep: int | None, ttl: float | None
    ) -> int:
        entries = [message.model_dump_json().encode() for message in messages]
        async with self.pool.acquire() as connection, connection.transaction():
            last = await connection.fetchval(
                f"SELECT max(seq) FROM {self.table} WHERE session_id = $1", session_id
            )
            first = 0 if last is None else last + 1
            await connection.execute(
                f"INSERT INTO {self.table} SELECT $1, $2 + n - 1, e "
                "FROM unnest($3::bytea[]) WITH ORDINALITY AS t(e, n)",
                session_id,
                first,
                entries,
            )
            total = first + len(entries)
            if keep is not None and total > keep:
                await connection.execute(
                    f"DELETE FROM {self.table} WHERE session_id = $1 AND seq < $2",
                    session_id,
                    total - keep,
                )
        return total if keep is None else min(total, keep)


@dataclass(slots=True)
class PostgresBench:
    """The store and the floor of one run, each in a schema of its own (dropped at the end),
    and an in-memory store to run beside them."""

    ours: PostgresStateStore
    floor: HandWrittenPostgresFloor
    memory: InMemoryStateStore
    counter: type[CountingConnection]
    server_version: str

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[PostgresBench]:
        """Connect (a server that cannot be reached fails the run at once) and create the
        schemas; at the end drop them and close both pools."""
        counter = type("Counting", (CountingConnection,), {"writes": 0})
        name = f"chatstate_bench_{secrets.token_hex(4)}"
        try:
            pool = await asyncpg.create_pool(url, **_pool_options(counter))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise BenchError(f"cannot reach PostgreSQL: {exc}") from exc
        try:
            await pool.execute(f"CREATE SCHEMA {name}_floor")
            floor = HandWrittenPostgresFloor(pool, f"{name}_floor")
            await floor.create()
            version = str(await pool.fetchval("SHOW server_version"))
            async with (
                PostgresStateStore.from_url(url, schema=name, **_pool_options(counter)) as ours,
                InMemoryStateStore(max_sessions=None) as memory,
            ):
                try:
                    yield cls(ours, floor, memory, counter, version)
                finally:
                    await ours.drop_schema()
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await pool.execute(f"DROP SCHEMA IF EXISTS {name}_floor CASCADE")
            await pool.close()

    def environment(self) -> dict[str, Any]:
        return {"postgres_server": self.server_version, "asyncpg": asyncpg.__version__}


def plan(bench: PostgresBench, options: BenchOptions) -> list[PlanItem]:
    """The Postgres turn at each of :data:`~chatstate.bench.scenarios.SQLITE_SESSIONS`
    concurrent sessions (1 and 100)."""

    def item(sessions: int) -> PlanItem:
        scenario = scenarios.TURN
        return PlanItem(
            group="postgres",
            key=f"{scenario.key}@{sessions}",
            name=f"postgres: {scenario.describe(options)}, {sessions:,} sessions",
            run=lambda progress: run_scenario(bench, scenario, sessions, options, progress),
        )

    return [item(sessions) for sessions in scenarios.SQLITE_SESSIONS]


async def run_scenario(
    bench: PostgresBench,
    scenario: Scenario,
    sessions: int,
    options: BenchOptions,
    progress: Progress,
) -> Measured:
    """Seed, then alternate rounds of ours, the in-memory store and the floor, all sessions at
    once, counting round trips at the connections."""
    params = scenario.params(options, fresh=True)
    ids = [f"postgres-{scenario.key}{sessions}-{index}" for index in range(sessions)]
    sides = {
        "ours": scenario.ours(bench.ours, params),
        IN_MEMORY: scenario.ours(bench.memory, params),
        "floor": scenario.floor(bench.floor, params),
    }
    backends: list[Backend] = [bench.ours, bench.memory, bench.floor]
    progress.detail("seeding")
    await scenarios.seed(backends, ids, scenario.seed_count(options), params)
    turns = turns_per_session(sessions, options)
    counter = bench.counter
    figures = await compare_concurrent(
        sides,
        ids,
        turns=turns,
        rounds=options.repeats,
        round_trips=lambda: counter.writes,
        progress=progress,
    )
    details = concurrent_details(sessions, turns, figures)
    return Measured(_rows(scenario, sessions, options, figures), details)


def _rows(
    scenario: Scenario, sessions: int, options: BenchOptions, figures: dict[str, ConcurrentFigures]
) -> list[Row]:
    target = TURN_ONE_SESSION if sessions == 1 else TURN_CONCURRENT

    def metrics(side: str) -> list[SideMetric]:
        return [
            (metric, unit, pick, target if metric == "throughput" else None)
            for metric, unit, pick in side_metrics(scenario, side)
        ]

    return side_rows("postgres", scenario, sessions, options, figures, metrics, round_trips=True)
