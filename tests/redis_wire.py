"""What a Redis store sends, seen at the connection: each write to the server (one round trip),
the commands it carries and the task that made it; and faults injected there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


@dataclass
class Write:
    """One write to the server: a round trip, however many commands it carries."""

    task: asyncio.Task[Any] | None
    commands: list[list[bytes]]

    @property
    def names(self) -> list[str]:
        return [command[0].decode().upper() for command in self.commands]


def parse(packed: bytes) -> list[list[bytes]]:
    """The commands in a RESP write (arrays of bulk strings, as clients send them)."""
    commands: list[list[bytes]] = []
    at = 0
    while at < len(packed):
        assert packed[at : at + 1] == b"*", packed[at : at + 20]
        end = packed.index(b"\r\n", at)
        count, at = int(packed[at + 1 : end]), end + 2
        command = []
        for _ in range(count):
            assert packed[at : at + 1] == b"$"
            end = packed.index(b"\r\n", at)
            length, at = int(packed[at + 1 : end]), end + 2
            command.append(packed[at : at + length])
            at += length + 2
        commands.append(command)
    return commands


WRITE_IDS_FIELDS = {b"w1", b"w2", b"w3", b"w4", b"wn", b"x"}
"""The fields a deleted session's meta hash keeps for 10 minutes: its last write ids (a ring of
four fields and a count) and whether the delete found it. No history, no numbers."""


class WireConnection(Connection):
    """Logs every write; ``fault(write)`` may return an exception to raise instead of sending
    it, ``stall`` seconds pass before each write goes out (a slow server), and
    ``refuse_connects`` makes that many connection attempts fail first, and ``lose_replies``
    makes that many writes go out and run, and then the connection drop before their reply is
    read (the write applied, its caller told nothing). Use :func:`wire` for a class of one's own
    (the log is per class)."""

    writes: ClassVar[list[Write]]
    connects: ClassVar[int]
    refuse_connects: ClassVar[int]
    lose_replies: ClassVar[int]
    stall: ClassVar[float]
    fault: ClassVar[Callable[[Write], BaseException | None] | None]
    _lose_reply = False

    async def connect(self) -> None:
        cls = type(self)
        cls.connects += 1
        if cls.refuse_connects > 0:
            cls.refuse_connects -= 1
            raise OSError(111, "Connection refused (injected)")
        self._handshake = True  # its own commands (CLIENT SETINFO...) are not logged
        try:
            await super().connect()
        finally:
            self._handshake = False

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if isinstance(command, str):
            data = command.encode()
        elif isinstance(command, bytes | bytearray | memoryview):
            data = bytes(command)
        else:
            data = b"".join(bytes(chunk) for chunk in command)
        if getattr(self, "_handshake", False):
            await super().send_packed_command(data, check_health)
            return
        write = Write(asyncio.current_task(), parse(data))
        cls = type(self)
        cls.writes.append(write)
        failure = cls.fault(write) if cls.fault is not None else None
        if failure is not None:
            await self.disconnect()  # as a write that failed halfway leaves it
            raise failure
        if cls.stall:
            await asyncio.sleep(cls.stall)
        await super().send_packed_command(data, check_health)
        if cls.lose_replies > 0:
            cls.lose_replies -= 1
            self._lose_reply = True

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._lose_reply:
            self._lose_reply = False
            try:
                await super().read_response(*args, **kwargs)  # it ran (or failed: lost as well)
            except ResponseError:
                pass
            await self.disconnect()
            raise RedisConnectionError("connection lost before the reply was read (injected)")
        return await super().read_response(*args, **kwargs)


def wire() -> type[WireConnection]:
    """A connection class with a log (and faults) of its own."""
    return type(
        "Wire",
        (WireConnection,),
        {
            "writes": [],
            "connects": 0,
            "refuse_connects": 0,
            "lose_replies": 0,
            "stall": 0.0,
            "fault": None,
        },
    )


def wired_client(url: str, **options: Any) -> tuple[Redis, type[WireConnection]]:
    """A client on ``url`` whose connections log their writes (``retry``: none of redis-py's)."""
    connection = wire()
    pool = ConnectionPool.from_url(url, connection_class=connection, **options)
    return Redis.from_pool(pool), connection
