"""A store with only the methods of the StateStore protocol: no versions, summaries or leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

from chatstate import InMemoryStateStore, Message
from chatstate.stores import TTL


class PlainStore:
    """The five methods of :class:`~chatstate.StateStore`, over an in-memory store."""

    def __init__(self) -> None:
        self._inner = InMemoryStateStore()

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        return await self._inner.load(session_id, limit=limit)

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        await self._inner.save(session_id, messages, ttl=ttl)

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        return await self._inner.append(session_id, messages, max_messages=max_messages, ttl=ttl)

    async def delete(self, session_id: str) -> bool:
        return await self._inner.delete(session_id)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
