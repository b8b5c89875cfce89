"""The PostgreSQL store: the store core over :class:`PostgresBackend`, on a pool given or made."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import asyncpg

from chatstate._checks import check_ttl, redact_url
from chatstate._compression import Compression
from chatstate.errors import ConfigurationError
from chatstate.stores._codec import DEFAULT_COMPRESS_OVER, DEFAULT_MAX_MESSAGE_BYTES, EntryCodec
from chatstate.stores._core import BackendStore
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook
from chatstate.stores._near_cache import NearCache
from chatstate.stores.base import TTL
from chatstate.stores.postgres._backend import PostgresBackend
from chatstate.stores.postgres._schema import check_schema_name

__all__ = ["DEFAULT_COMMAND_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "PostgresStateStore"]

DEFAULT_COMMAND_TIMEOUT = 5.0
"""Seconds :meth:`PostgresStateStore.from_url` gives a call's answer before it fails with a
timeout (OutcomeUnknownError for a write)."""

DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds :meth:`PostgresStateStore.from_url` gives a new connection."""

DEFAULT_MAX_CONNECTIONS = 20
"""The size of the pool :meth:`PostgresStateStore.from_url` makes."""


class PostgresStateStore(BackendStore[bytes]):
    """History in PostgreSQL, shared by every instance of an app, durable with the database's
    backups and point-in-time recovery.

    ``PostgresStateStore(pool)`` uses an ``asyncpg`` pool that you own (and close);
    :meth:`from_url` (or ``open_store("postgresql://...")``) makes one that the store owns and
    closes in :meth:`aclose`. The store's tables and functions live in one schema (``schema``,
    default ``"chatstate"``), created on first use and migrated by later versions; a schema
    written by a newer chatstate is refused with UnsupportedFormatError. Two apps share a
    database by naming two schemas.

    Every call is one statement, so one round trip: a load one ``SELECT``; a write one call of a
    server-side function that runs its whole transaction (write-id check, lease fence, insert,
    trim, expiry, version). A pool of your own best passes ``reset=no_reset``
    (:func:`~chatstate.stores.postgres.no_reset`) to ``asyncpg.create_pool``: asyncpg's default
    reset costs a round trip on every release, and the store leaves nothing on a connection to
    reset. asyncio only (asyncpg).

    - ``schema``: the PostgreSQL schema of the store's tables (a lowercase identifier).
    - ``sweep_interval`` (default 60 s): expired sessions are never returned; their rows are
      deleted by a chunk of up to 500 that a write runs in its own transaction, at most once per
      ``sweep_interval`` seconds per instance (rows another transaction holds are skipped, so it
      never waits on a lock). ``None`` turns it off; :meth:`sweep` sweeps everything now.
    - ``batch_appends`` (on by default): an append made while others of this store are under
      way joins them: up to 64 go in one statement and one transaction (sorted by session, each
      still atomic and fenced on its own), so concurrent sessions share round trips and commits.
      An append with nothing to share with goes out at once. Off, every append is a call alone.
    - ``clock``: the wall clock (Unix seconds) that expiry and leases are reckoned by; None (the
      default) is the server's, which every instance shares. Tests give a fake one.
    - ``on_corrupt``, ``compress_over``, ``compression``, ``max_message_bytes``,
      ``message_cache_bytes``, ``encryption``, ``sliding_ttl``, ``near_cache``, ``hooks``: as for
      :class:`~chatstate.stores.sqlite.SQLiteStateStore`.

    Errors: no connection (server down, refused) raises StateSaveError or StateLoadError;
    a call whose answer did not come (a timeout, the connection lost during it) raises
    OutcomeUnknownError for a write, which its ``write_id`` makes safe to retry.
    """

    backend: PostgresBackend

    def __init__(
        self,
        pool: asyncpg.Pool | None = None,
        *,
        schema: str = "chatstate",
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] | None = None,
        batch_appends: bool = True,
        on_corrupt: Literal["skip", "raise"] = "skip",
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        compression: Compression = "auto",
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        message_cache_bytes: int = 32 << 20,
        sliding_ttl: TTL = None,
        encryption: Encryption | None = None,
        near_cache: NearCache | None = None,
        hooks: Sequence[Hook] = (),
        dsn: str | None = None,
        pool_options: dict[str, Any] | None = None,
    ) -> None:
        if pool is not None and not isinstance(pool, asyncpg.Pool):
            raise ConfigurationError(f"pool must be an asyncpg.Pool, got {type(pool).__name__}")
        if (pool is None) == (dsn is None):
            raise ConfigurationError("give a pool, or a dsn (PostgresStateStore.from_url)")
        if sweep_interval is not None:
            sweep_interval = check_ttl(sweep_interval, name="sweep_interval")
        if not isinstance(batch_appends, bool):
            raise ConfigurationError(f"batch_appends must be True or False, got {batch_appends!r}")
        if clock is not None and not callable(clock):
            raise ConfigurationError(f"clock must be callable or None, got {clock!r}")
        backend = PostgresBackend(
            pool,
            dsn=dsn,
            pool_options=pool_options,
            schema=check_schema_name(schema),
            clock=clock,
            sweep_interval=sweep_interval,
            batch_appends=batch_appends,
        )
        codec = EntryCodec.for_store(
            compress_over=compress_over,
            compression=compression,
            message_cache_bytes=message_cache_bytes,
            max_message_bytes=max_message_bytes,
            encryption=encryption,
        )
        super().__init__(
            backend,
            codec=codec,
            on_corrupt=on_corrupt,
            sliding_ttl=sliding_ttl,
            near_cache=near_cache,
            hooks=hooks,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStateStore:
        """A store on a pool made from ``url`` (``postgresql://user:password@host:port/db``, or
        ``postgres://``) on first use, closed by :meth:`aclose`.

        ``options`` that the constructor takes (``schema``, ``sliding_ttl``, ...) go to the
        store, the rest to ``asyncpg.create_pool`` (``max_size``, default 20; ``command_timeout``,
        default 5 s; ``timeout`` to connect, default 2 s; ``server_settings``, ``ssl``...)."""
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(
                "url must start with postgresql:// or postgres://, got "
                f"{redact_url(url) if isinstance(url, str) else type(url).__name__}"
            )
        store_options = {name: options.pop(name) for name in _STORE_OPTIONS & options.keys()}
        options.setdefault("max_size", DEFAULT_MAX_CONNECTIONS)
        options.setdefault("command_timeout", DEFAULT_COMMAND_TIMEOUT)
        options.setdefault("timeout", DEFAULT_CONNECT_TIMEOUT)
        return cls(dsn=url, pool_options=options, **store_options)

    def __repr__(self) -> str:
        return f"PostgresStateStore(schema={self.schema!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of the store's tables."""
        return self.backend.schema

    @property
    def expirations(self) -> int:
        """Expired sessions deleted by this instance's sweeps."""
        return self.backend.expirations

    async def drop_schema(self) -> None:
        """Remove the store's schema with every table and function in it: all of its history,
        for good (a later call creates the schema afresh)."""
        await self.backend.drop_schema()

    async def sweep(self) -> int:
        """Delete every expired session now (and expired leases and index entries); returns
        how many sessions. In chunks, each its own short transaction."""
        return await self.backend.sweep()


_STORE_OPTIONS = frozenset(inspect.signature(PostgresStateStore.__init__).parameters) - {
    "self",
    "pool",
    "dsn",
    "pool_options",
}
