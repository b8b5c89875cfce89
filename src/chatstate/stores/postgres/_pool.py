"""The connections of the PostgreSQL backend: the pool (given, or made from a DSN on first use),
the layout created or migrated before the first call, and each call run as one statement on a
pooled connection that a failure other than a statement's error never hands to the next caller."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

from chatstate.errors import ChatStateError
from chatstate.stores._backend import Fenced
from chatstate.stores.postgres._errors import FENCED, NotSent
from chatstate.stores.postgres._queries import QUERIES
from chatstate.stores.postgres._schema import migrate

__all__ = ["SWEEP_CHUNK", "PostgresCalls", "no_reset"]

SWEEP_CHUNK = 500
"""Sessions deleted by one chunk of a sweep, and ids read by one step of a listing."""

_T = TypeVar("_T")


async def no_reset(connection: object) -> None:
    """Give ``asyncpg.create_pool(reset=no_reset)``: no reset of a connection given back to the
    pool (the store leaves no session state on it), which saves asyncpg's reset query, a round
    trip, on every release."""


class PostgresCalls:
    """A pool (given, or made from ``dsn`` on first use) and the statements of ``_queries`` in
    ``schema``, whose layout is created or migrated before the first call."""

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        *,
        dsn: str | None,
        pool_options: dict[str, Any] | None,
        schema: str,
        clock: Callable[[], float] | None,
        sweep_interval: float | None,
    ) -> None:
        self.schema = schema
        self.dsn = dsn
        self._pool = pool
        self._pool_options = pool_options or {}
        self._owns_pool = pool is None
        self._ready = False
        self._starting = anyio.Lock()
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._sql = {name: query.format(s=schema) for name, query in QUERIES.items()}

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The connection pool (None until an owned one is made)."""
        return self._pool

    def _now(self) -> float | None:
        """The time a call runs at: the store's clock, or None for the server's."""
        return None if self._clock is None else self._clock()

    async def _start(self) -> asyncpg.Pool:
        """The pool, made if the store owns it, and the layout, created or migrated."""
        async with self._starting:
            if self._pool is None:
                options = {"min_size": 1, "max_size": 10, "reset": no_reset}
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, **{**options, **self._pool_options}
                    )
                except Exception as exc:
                    raise NotSent(f"could not connect to PostgreSQL: {exc}") from exc
            if not self._ready:
                connection = await self._acquire(self._pool)
                try:
                    await migrate(connection, self.schema)
                except ChatStateError:  # a layout of a newer chatstate
                    raise
                except BaseException as exc:
                    connection.terminate()
                    if not isinstance(exc, Exception):
                        raise
                    # The call itself was never sent: nothing of it was applied.
                    raise NotSent(f"the store's schema could not be set up: {exc!r}") from exc
                finally:
                    await self._pool.release(connection)
                self._ready = True
            return self._pool

    async def _acquire(self, pool: asyncpg.Pool) -> Any:
        try:
            return await pool.acquire()
        except Exception as exc:
            raise NotSent(f"no PostgreSQL connection could be had: {exc}") from exc

    async def _run(self, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """``call`` on a connection of the pool, given back at the end."""
        pool = self._pool if self._ready else await self._start()
        assert pool is not None
        connection = await self._acquire(pool)
        try:
            return await call(connection)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == FENCED:
                raise Fenced(str(exc)) from exc
            if exc.severity_en != "ERROR":  # FATAL, PANIC: the server is ending the connection
                connection.terminate()
            raise
        except BaseException:
            # Lost, timed out, cancelled, or in a state asyncpg cannot go on from: never given to
            # the next caller as it is (the pool makes a new connection in its place).
            connection.terminate()
            raise
        finally:
            await pool.release(connection)

    async def _row(self, name: str, *args: object) -> Any:
        query = self._sql[name]
        return await self._run(lambda connection: connection.fetchrow(query, *args))

    async def _value(self, name: str, *args: object) -> Any:
        query = self._sql[name]
        return await self._run(lambda connection: connection.fetchval(query, *args))

    async def _rows(self, name: str, *args: object) -> list[Any]:
        query = self._sql[name]
        return await self._run(lambda connection: connection.fetch(query, *args))

    def _sweep_chunk(self) -> int:
        """A chunk of the sweep to run in this write, when one is due (once per interval)."""
        if self._sweep_interval is None:
            return 0
        now = time.time() if self._clock is None else self._clock()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self._sweep_interval
        return SWEEP_CHUNK
