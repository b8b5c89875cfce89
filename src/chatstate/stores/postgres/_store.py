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
    backups and point-in-time recovery. Every call is one round trip: a load one ``SELECT``, a
    write one call of a server-side function that runs its whole transaction. asyncio only
    (asyncpg). How it works and fails: docs/stores/postgres.md.

    :param pool: an ``asyncpg`` pool that you own (and close), best made with
        ``reset=``:func:`~chatstate.stores.postgres.no_reset`; or none, and :meth:`from_url`
        makes one that the store owns and closes in :meth:`aclose`.
    :param schema: the PostgreSQL schema (a lowercase identifier) of the store's tables and
        functions, created on first use; two apps share a database by naming two. A schema
        written by a newer chatstate is refused with UnsupportedFormatError.
    :param sweep_interval: expired sessions are never returned; a write deletes up to 500 of them,
        in a transaction of its own, at most once per this many seconds per instance (``None``:
        never). :meth:`sweep` deletes every expired one now.
    :param clock: the wall clock in Unix seconds of expiry and leases; ``None``: the server's,
        which every instance shares. Tests give a fake one.
    :param batch_appends: an append made while others are under way joins them in one statement
        and one commit (each still atomic and fenced on its own); ``False``: every append alone.
    :param on_corrupt: an entry that cannot be decoded is ``"skip"``-ped (logged, counted in
        ``corrupt_entries``) or ``"raise"``-s CorruptEntryError.
    :param compress_over: compress an entry whose JSON is longer than this many bytes, when that
        makes it smaller (``None``: never).
    :param compression: ``"auto"`` (zstd where the zstandard package is installed, else zlib),
        ``"zstd"`` or ``"zlib"``; entries record theirs (docs/stores/redis.md, Compression).
    :param max_message_bytes: refuse, with InvalidMessageError and nothing of the call stored, a
        message whose JSON is longer (default 1 MiB; ``None``: no limit).
    :param message_cache_bytes: bounds a cache of the messages of recent entries, so that a load
        decodes only the entries it has not seen (0: off).
    :param sliding_ttl: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param encryption: seal every entry (:class:`~chatstate.Encryption`) before it reaches the
        database.
    :param near_cache: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param hooks: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param dsn: instead of a pool: the URL of one to make on first use (what :meth:`from_url`
        gives).
    :param pool_options: with ``dsn``: for ``asyncpg.create_pool``.
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
