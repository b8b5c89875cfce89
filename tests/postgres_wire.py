"""Helpers of the PostgreSQL tests: connection classes that count round trips (the bench's, see
:class:`chatstate.bench.postgres.CountingConnection`), stores in a schema of a test's own,
schemas of the layouts of earlier versions, and a transaction that holds a session's row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import asyncpg

from chatstate.bench.postgres import CountingConnection
from chatstate.stores.postgres import PostgresStateStore


def counting() -> type[CountingConnection]:
    """A connection class with a count of writes (round trips) of its own."""
    return type("Counting", (CountingConnection,), {"writes": 0})


def store(dsn: str, schema: str, **options: Any) -> PostgresStateStore:
    """A store on ``dsn`` in ``schema`` (an owned pool)."""
    return PostgresStateStore.from_url(dsn, schema=schema, **options)


_FIXTURES = Path(__file__).parent / "fixtures"


async def old_layout(dsn: str, schema: str, version: int) -> None:
    """Create ``schema`` as layout ``version`` (1 or 2) of an earlier chatstate left it: that
    layout's own SQL (``fixtures/postgres-layout-<version>.sql``) and its meta rows."""
    sql = (_FIXTURES / f"postgres-layout-{version}.sql").read_text(encoding="utf-8")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            f"CREATE SCHEMA {schema}; "
            f"CREATE TABLE {schema}.meta (name text PRIMARY KEY, value integer NOT NULL)"
        )
        await connection.execute(sql.replace("@schema@", schema))
        await connection.execute(f"INSERT INTO {schema}.meta VALUES ('schema', $1)", version)
        if version >= 2:  # revision 1 of its functions
            await connection.execute(f"INSERT INTO {schema}.meta VALUES ('functions', 1)")
    finally:
        await connection.close()


class _Event(Protocol):
    def set(self) -> None: ...


async def hold_the_session_row(dsn: str, schema: str, seconds: float, held: _Event) -> None:
    """A transaction that locks the session's row (then sets ``held``) and sleeps (pg_sleep)
    before committing."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute(f"SELECT FROM {schema}.sessions WHERE id = 's' FOR UPDATE")
            held.set()
            await connection.execute(f"SELECT pg_sleep({seconds})")
    finally:
        await connection.close()
