"""State stores: the protocol and the built-in implementations."""

from typing import TYPE_CHECKING, Any

from chatstate.stores.base import (
    TTL,
    Fold,
    SessionLeases,
    SessionSnapshot,
    SessionSummaries,
    SessionTransfer,
    StateStore,
    VersionedStore,
)
from chatstate.stores.cached import CachedStore
from chatstate.stores.memory import InMemoryStateStore
from chatstate.stores.sqlite import SQLiteStateStore

if TYPE_CHECKING:
    from chatstate.stores.encrypted import EncryptedStore
    from chatstate.stores.redis import RedisStateStore

__all__ = [
    "TTL",
    "CachedStore",
    "EncryptedStore",
    "Fold",
    "InMemoryStateStore",
    "RedisStateStore",
    "SQLiteStateStore",
    "SessionLeases",
    "SessionSnapshot",
    "SessionSummaries",
    "SessionTransfer",
    "StateStore",
    "VersionedStore",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the Redis store needs the `redis` extra, encryption `encryption`.
    if name == "EncryptedStore":
        from chatstate.stores.encrypted import EncryptedStore

        return EncryptedStore
    if name == "RedisStateStore":
        from chatstate.stores.redis import RedisStateStore

        return RedisStateStore
    raise AttributeError(f"module 'chatstate.stores' has no attribute {name!r}")
