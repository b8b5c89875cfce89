"""Appends of concurrent callers sent together: one statement, one transaction, one commit.

A commit waits for the server's WAL to reach the disk, and every round trip costs both sides
CPU; at 100 concurrent sessions those, not the work of an append, bound a store's throughput.
So an append that finds no other in flight goes out at once, alone (one session, or a quiet
moment, pays nothing); one that arrives while others are under way joins a batch, which its first
member (the leader) sends after one pass of the event loop, as one call of ``append_many``:
every member's append in turn, in one transaction. The members are sorted by session id, so that
two batches (of this process or another) lock their sessions in the same order and never
deadlock; a member refused by its fence is rolled back alone. If the batch fails, every member
fails with its error: each then raises OutcomeUnknownError or StateSaveError as a lone append
would, and retries it safely with its write id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

__all__ = ["AppendBatcher", "BatchAbandoned", "Item"]

Item = tuple[str, Sequence[bytes], int | None, float | None, str, str | None, bytes | None]
"""One append: session id, entries, bound, ttl, write id, fence, metadata (None: none given)."""

Row = tuple[int, int, bool, bool, bool]
"""What an append gives: length, version, trimmed, applied, fenced."""


class BatchAbandoned(Exception):
    """The member that was sending a batch was cancelled while it was under way: the others'
    appends may or may not have been applied."""


@dataclass(slots=True)
class _Batch:
    items: list[Item] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    rows: list[Row] | None = None
    error: BaseException | None = None


class AppendBatcher:
    """Joins appends made while others are in flight (see the module). ``one`` sends a lone
    append, ``many`` a batch (its items sorted by session); ``max_batch`` members at most."""

    def __init__(
        self,
        one: Callable[[Item], Awaitable[Row]],
        many: Callable[[list[Item]], Awaitable[list[Row]]],
        *,
        max_batch: int = 64,
    ) -> None:
        self._one = one
        self._many = many
        self._max_batch = max_batch
        self._open: _Batch | None = None
        self._in_flight = 0
        self.batches = 0
        """Batches of more than one append sent (for tests and metrics)."""

    async def append(self, item: Item) -> Row:
        if self._in_flight == 0 and self._open is None:
            self._in_flight += 1
            try:
                return await self._one(item)
            finally:
                self._in_flight -= 1
        batch = self._open
        if batch is not None:
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= self._max_batch:
                self._open = None  # full: the next append opens another
            await batch.done.wait()
            if batch.error is not None:
                raise batch.error
            assert batch.rows is not None
            return batch.rows[index]
        batch = self._open = _Batch([item])
        self._in_flight += 1
        try:
            await anyio.sleep(0)  # one pass of the loop: the appends made meanwhile join
            if self._open is batch:
                self._open = None
            batch.rows = await self._send(batch.items)
            return batch.rows[0]
        except BaseException as exc:
            batch.error = (
                exc if isinstance(exc, Exception) else BatchAbandoned("the batch was abandoned")
            )
            raise
        finally:
            self._in_flight -= 1
            batch.done.set()

    async def _send(self, items: list[Item]) -> list[Row]:
        if len(items) == 1:
            return [await self._one(items[0])]
        self.batches += 1
        order = sorted(range(len(items)), key=lambda index: items[index][0])
        rows = await self._many([items[index] for index in order])
        result: list[Any] = [None] * len(items)
        for position, index in enumerate(order):
            result[index] = rows[position]
        return result
