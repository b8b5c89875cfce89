"""State stores: the protocol, the store core with its backend interface, and the built-in
stores (each the core over a backend of its own)."""

from typing import TYPE_CHECKING, Any

from chatstate.stores._backend import (
    KEEP,
    Backend,
    BackendCensus,
    Describing,
    Editing,
    EditOutcome,
    ErrorKind,
    Fenced,
    Page,
    Popped,
    RawSession,
    Written,
)
from chatstate.stores._core import BackendStore
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook, Operation, StoreEvent
from chatstate.stores._history import HistoryPage, StoredMessage
from chatstate.stores._item_codec import ItemFormat, JsonItems, PydanticItems
from chatstate.stores._item_store import ItemStore
from chatstate.stores._metadata import MAX_METADATA_BYTES, SessionInfo, check_metadata
from chatstate.stores._near_cache import NearCache
from chatstate.stores.base import (
    TTL,
    Fold,
    SessionHistory,
    SessionLeases,
    SessionMetadata,
    SessionSnapshot,
    SessionSummaries,
    SessionTransfer,
    StateStore,
    VersionedStore,
)
from chatstate.stores.memory import InMemoryStateStore, MemoryBackend
from chatstate.stores.sqlite import SQLiteBackend, SQLiteStateStore

if TYPE_CHECKING:
    from chatstate.stores.redis import RedisStateStore

__all__ = [
    "KEEP",
    "MAX_METADATA_BYTES",
    "TTL",
    "Backend",
    "BackendCensus",
    "BackendStore",
    "Describing",
    "EditOutcome",
    "Editing",
    "Encryption",
    "ErrorKind",
    "Fenced",
    "Fold",
    "HistoryPage",
    "Hook",
    "InMemoryStateStore",
    "ItemFormat",
    "ItemStore",
    "JsonItems",
    "MemoryBackend",
    "NearCache",
    "Operation",
    "Page",
    "Popped",
    "PydanticItems",
    "RawSession",
    "RedisStateStore",
    "SQLiteBackend",
    "SQLiteStateStore",
    "SessionHistory",
    "SessionInfo",
    "SessionLeases",
    "SessionMetadata",
    "SessionSnapshot",
    "SessionSummaries",
    "SessionTransfer",
    "StateStore",
    "StoreEvent",
    "StoredMessage",
    "VersionedStore",
    "Written",
    "check_metadata",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the Redis store needs the `redis` extra.
    if name == "RedisStateStore":
        from chatstate.stores.redis import RedisStateStore

        return RedisStateStore
    raise AttributeError(f"module 'chatstate.stores' has no attribute {name!r}")
