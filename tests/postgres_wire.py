"""Helpers of the PostgreSQL tests: a connection class that counts round trips, and stores on a
database and schema of a test's own."""

from __future__ import annotations

from typing import Any

import asyncpg

from chatstate.stores.postgres import PostgresStateStore


class CountingConnection(asyncpg.Connection):
    """Counts the writes to the server: asyncpg sends each exchange (a statement's Bind, Execute
    and Sync; a Parse the first time) in one write and then waits for the answer, so one write
    is one round trip. Use :func:`counting` for a class with a count of its own."""

    writes = 0

    def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, transport, *args, **kwargs)
        write = transport.write
        counted = type(self)

        def counting_write(data: bytes) -> None:
            counted.writes += 1
            write(data)

        transport.write = counting_write


def counting() -> type[CountingConnection]:
    return type("Counting", (CountingConnection,), {"writes": 0})


def store(dsn: str, schema: str, **options: Any) -> PostgresStateStore:
    """A store on ``dsn`` in ``schema`` (an owned pool)."""
    return PostgresStateStore.from_url(dsn, schema=schema, **options)
