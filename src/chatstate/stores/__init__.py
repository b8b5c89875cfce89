"""State stores: the protocol and the built-in implementations."""

from chatstate.stores.base import TTL, StateStore
from chatstate.stores.memory import InMemoryStateStore

__all__ = ["TTL", "InMemoryStateStore", "StateStore"]
