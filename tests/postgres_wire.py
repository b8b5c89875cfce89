"""Helpers of the PostgreSQL tests: connection classes that count round trips (the bench's, see
:class:`chatstate.bench.postgres.CountingConnection`), and stores in a schema of a test's own."""

from __future__ import annotations

from typing import Any

from chatstate.bench.postgres import CountingConnection
from chatstate.stores.postgres import PostgresStateStore


def counting() -> type[CountingConnection]:
    """A connection class with a count of writes (round trips) of its own."""
    return type("Counting", (CountingConnection,), {"writes": 0})


def store(dsn: str, schema: str, **options: Any) -> PostgresStateStore:
    """A store on ``dsn`` in ``schema`` (an owned pool)."""
    return PostgresStateStore.from_url(dsn, schema=schema, **options)
