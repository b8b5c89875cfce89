"""The events a store emits, one per operation: what metrics, traces and alerts are made of.

Subscribe with ``store.add_hook(callback)``: ``callback(event)`` is called, synchronously and in
the task that made the call, when each operation ends (well or not). A hook must be quick and must
not raise (one that raises is logged and left in place); to do I/O, hand the event to a task of
your own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["Hook", "Operation", "StoreEvent"]

logger = logging.getLogger("chatstate")

Operation: TypeAlias = Literal[
    "load",
    "append",
    "save",
    "delete",
    "pop",
    "edit",
    "compact",
    "snapshot",
    "restore",
    "version",
    "lease",
    "index",
    "metadata",
]
"""What a store was asked to do. ``load`` covers every read of history (with its summary or
version too); ``lease`` the taking of a lease (``seconds``: the wait); ``index`` the conversation
index; ``pop`` a pop or an undo (and an item store's pop, :class:`~chatstate.stores.ItemStore`);
``edit`` an edit or removal of one message by id; ``metadata`` a read or write of a session's
metadata alone (read with the history, it is a ``load``)."""


@dataclass(slots=True)
class StoreEvent:
    """One operation of a store, when it ended."""

    operation: Operation
    session_id: str
    started: float
    """When it started, by the store's ``perf_counter`` (seconds)."""
    seconds: float
    """How long it took."""
    messages: int = 0
    """Messages read or written."""
    error: BaseException | None = None
    """What it raised (None: it went well)."""
    trimmed: bool = False
    """An append that dropped old messages to stay within its bound."""
    skipped: int = 0
    """Entries a read skipped because they could not be decoded."""


Hook: TypeAlias = Callable[[StoreEvent], None]
"""A subscriber to a store's events."""


def emit(hooks: list[Hook], event: StoreEvent) -> None:
    """Call every hook with ``event``; one that raises is logged and the others still run."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            logger.exception("a store hook (%r) raised on %s", hook, event.operation)
