"""What every adapter does first: an item store from the store it was given."""

from __future__ import annotations

from typing import Any, TypeVar

from chatstate.errors import ConfigurationError
from chatstate.stores import BackendStore, ItemFormat, ItemStore, StateStore
from chatstate.stores.base import TTL

T = TypeVar("T")


def item_store(
    store: ItemStore[Any] | StateStore,
    format: ItemFormat[T],
    *,
    max_items: int | None,
    ttl: TTL,
) -> ItemStore[T]:
    """``store`` itself if it is an item store (its own bounds then apply), else an item store
    over its backend in ``format``, keeping the newest ``max_items`` and expiring ``ttl`` after
    the last write."""
    if isinstance(store, ItemStore):
        if max_items is not None or ttl is not None:
            raise ConfigurationError(
                "max_items and ttl are the item store's own options: give them to it, not here"
            )
        return store
    if not isinstance(store, BackendStore):
        raise ConfigurationError(
            "store must be a chatstate store (InMemoryStateStore, SQLiteStateStore, "
            f"RedisStateStore, a BackendStore) or an ItemStore, got {type(store).__name__}"
        )
    return ItemStore.over(store, format, max_items=max_items, ttl=ttl)
