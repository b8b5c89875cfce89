"""``open_store(url)``: any built-in store from a URL."""

from __future__ import annotations

from typing import Any

from chatstate._checks import redact_url
from chatstate.errors import ConfigurationError
from chatstate.stores.base import StateStore
from chatstate.stores.memory import InMemoryStateStore

__all__ = ["open_store"]


def open_store(url: str, **options: Any) -> StateStore:
    """The store a URL names: ``memory://`` (this process only), ``sqlite:///path`` (a file,
    relative to the working directory; ``sqlite:////abs/path`` for an absolute one,
    ``sqlite:///:memory:`` for a private in-memory database), and through
    ``RedisStateStore.from_url``: ``redis://`` or ``rediss://`` (one server),
    ``redis+cluster://host:port[,host:port]`` or ``redis://...?cluster=true`` (a Redis Cluster),
    ``redis+sentinel://host:port[,host:port]/service[/db]`` (the primary its Sentinels name);
    ``?durability=replicas`` acknowledges a write once a replica has it (docs/durability.md);
    ``postgresql://`` or ``postgres://`` (``PostgresStateStore.from_url``).
    ``options`` go to the store. Raises :class:`~chatstate.errors.ConfigurationError` for
    anything else."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a store URL must be a str, got {type(url).__name__}")
    if url == "memory://" or url.startswith("memory://"):
        return InMemoryStateStore(**options)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        if path == url or not path or "?" in path:
            raise ConfigurationError(
                f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory: (options as arguments)"
            )
        from chatstate.stores.sqlite import SQLiteStateStore

        return SQLiteStateStore(path, **options)
    if url.startswith(("redis://", "rediss://", "unix://", "redis+", "rediss+")):
        from chatstate.stores.redis import RedisStateStore

        return RedisStateStore.from_url(url, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from chatstate.stores.postgres import PostgresStateStore

        return PostgresStateStore.from_url(url, **options)
    raise ConfigurationError(
        f"unknown store URL {redact_url(url)!r}: use memory://, sqlite:///path.db, "
        "redis://host:port/db, rediss://host:port/db, redis+cluster://host:port, "
        "redis+sentinel://host:port/service or postgresql://user@host:port/db"
    )
