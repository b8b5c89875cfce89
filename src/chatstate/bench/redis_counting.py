"""Round trips to Redis, counted at the connection: the bench's and the tests' one counter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from redis.asyncio.connection import Connection

__all__ = ["CountingConnection", "round_trips"]


class CountingConnection(Connection):
    """Counts writes to the server: one per round trip, however many commands it carries.

    The count is taken at the connection's socket stream (every ``write`` and ``writelines``),
    not by overriding a method of redis-py's connection: the store's transport writes to that
    stream directly when the connection is redis-py's own, and a connection class that overrides
    ``send_packed_command`` would send it down redis-py's slower path instead (a measure that
    changes what it measures)."""

    sent: ClassVar[int] = 0

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        self._writer = _CountingWriter(self._writer)  # type: ignore[assignment]


class _CountingWriter:
    """An ``asyncio.StreamWriter`` that counts its writes into ``CountingConnection.sent``."""

    __slots__ = ("_writer", "drain")

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self.drain = writer.drain

    def write(self, data: bytes) -> None:
        CountingConnection.sent += 1
        self._writer.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        CountingConnection.sent += 1
        self._writer.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def round_trips() -> int:
    """The writes counted so far by every :class:`CountingConnection`."""
    return CountingConnection.sent
