"""How the auto-pipeline's commands reach Redis: one command, or many in one write.

The standalone transport keeps the connections it uses (at most ``max_in_flight``) out of the
client's pool while the store lives, and checks an idle one for a closed socket before it reuses it
(the server may have restarted since). The cluster transport hands each batch to redis-py's cluster
pipeline, which groups the commands per node and follows redirections (and, where redis-py
gives up on an ASK, :mod:`._cluster` follows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover - redis-py without its hiredis extra
    hiredis = None  # type: ignore[assignment]
    _AsyncHiredisParser = None  # type: ignore[assignment,misc]

__all__ = [
    "PERMANENT",
    "ClusterTransport",
    "Command",
    "CommandNotSent",
    "ConnectionTransport",
    "Transport",
]

Command: TypeAlias = tuple[Any, ...]
"""A Redis command and its arguments: ``("LRANGE", key, -20, -1)``."""


# Connecting failed for a reason that trying again will not change.
PERMANENT = (AuthenticationError, AuthorizationError)


class CommandNotSent(RedisConnectionError):
    """No connection to Redis could be had: the command never left the client, so trying it again
    cannot apply it twice."""


# redis-py 8 renamed Connection.can_read_destructive to can_read; both check the socket without
# blocking for buffered data or an end of file.
_CAN_READ_NAME = "can_read" if hasattr(AbstractConnection, "can_read") else "can_read_destructive"


class Transport(Protocol):
    async def execute(self, command: Command) -> Any:
        """Send one command, return its reply; raise its error."""

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in one write; their replies, an error reply as its exception."""

    def detach(self) -> list[AbstractConnection]:
        """Stop using the connections held; returns them, for :meth:`release`."""

    async def release(self, connections: Sequence[AbstractConnection]) -> None:
        """Give connections back to the client's pool."""


class ConnectionTransport:
    """Commands on connections of a standalone client's pool, packed and read by redis-py's own
    connection, without the per-command work of its client and pipeline layers."""

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool
        options = self._pool.connection_kwargs
        # hiredis packs a command in C, ten times faster than redis-py's asyncio connection
        # does in Python; it writes text as UTF-8, so only where the client would too.
        utf8 = (
            options.get("encoding", "utf-8").lower().replace("-", ""),
            options.get("encoding_errors", "strict"),
        ) == ("utf8", "strict")
        self._pack: Callable[[Command], bytes] | None = (
            hiredis.pack_command if utf8 and hiredis is not None else None
        )
        self._idle: list[AbstractConnection] = []
        self._held: list[AbstractConnection] = []
        # Packed commands and command heads that recur (see _packed).
        self._known: dict[Command, bytes] = {}

    async def _connected(self) -> AbstractConnection:
        """A connection, connected: a failure here means no command left the client."""
        try:
            connection = await self._take()
        except PERMANENT:
            raise
        except (RedisError, OSError) as exc:
            raise CommandNotSent(f"no connection to Redis ({type(exc).__name__}: {exc})") from exc
        if not connection.is_connected:
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except PERMANENT:
                self._idle.append(connection)
                raise
            except (RedisError, OSError) as exc:
                self._idle.append(connection)
                raise CommandNotSent(
                    f"no connection to Redis ({type(exc).__name__}: {exc})"
                ) from exc
            except BaseException:
                self._idle.append(connection)
                raise
        return connection

    async def _take(self) -> AbstractConnection:
        if not self._idle:
            connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            self._held.append(connection)
            return connection
        connection = self._idle.pop()
        try:
            if connection.is_connected:
                # Unread data or an end of file: the server closed it (a restart, an idle timeout)
                # or it is out of step. Reconnect now rather than fail the caller's command.
                if _reads_fast(connection):
                    stale = _stale(connection._parser)
                else:
                    try:
                        stale = await getattr(connection, _CAN_READ_NAME)()
                    except (RedisConnectionError, OSError):
                        stale = True
                if stale:
                    await connection.disconnect()
        except BaseException:
            # A caller cancelled during the check (redis-py before 8 reads the socket there; a
            # disconnect waits on every version) must not take the connection with it: out of the
            # idle list it would stay checked out of the pool, unused, until the store closes.
            self._idle.append(connection)
            raise
        return connection

    async def execute(self, command: Command) -> Any:
        reply = (await self._exchange((command,)))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return await self._exchange(commands)

    def _ready(self) -> AbstractConnection | None:
        """The next idle connection if it is known good without an await (connected, read
        directly, nothing unread): what :meth:`_connected` would give, without its coroutines.
        None otherwise, and it stays idle for :meth:`_connected` to check and reconnect."""
        idle = self._idle
        if idle:
            connection = idle[-1]
            if (
                connection.is_connected
                and _reads_fast(connection)
                and not _stale(connection._parser)
            ):
                return idle.pop()
        return None

    async def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        connection = self._ready() or await self._connected()
        if self._pack is not None:
            packed: bytes | list[bytes] = self._packed(commands)
        else:
            packed = connection.pack_commands(commands)
        replies: list[Any] = []
        try:
            # One deadline for the whole exchange instead of one per reply (the connection's
            # socket_timeout). A failure inside send or read (a timeout, a cancel) disconnects
            # the connection, so it goes back clean and reconnects on its next use.
            async with asyncio.timeout(connection.socket_timeout):
                if _reads_fast(connection):
                    await _send(connection, packed)
                    replies = await _read_replies(connection, len(commands))
                else:
                    await connection.send_packed_command(packed, False)
                    for _ in range(len(commands)):
                        try:
                            replies.append(await connection.read_response(timeout=math.inf))
                        except ResponseError as exc:
                            replies.append(exc)
        except TimeoutError as exc:
            raise RedisTimeoutError(
                f"no reply from Redis within {connection.socket_timeout} s"
            ) from exc
        finally:
            self._idle.append(connection)
        return replies

    def _packed(self, commands: Sequence[Command]) -> bytes:
        """The commands packed by hiredis, but for what recurs, packed once: a session's load
        (its LRANGE, the same every turn) and the head of a script on a session's keys (EVALSHA,
        the script, its keys), which then takes only its arguments packed. Packing costs about
        a microsecond a command, most of it in the C library's sprintf for each length."""
        pack = self._pack
        assert pack is not None
        known = self._known
        if len(known) >= _KNOWN_KEPT:
            known.clear()
        parts: list[bytes] = []
        for command in commands:
            name = command[0]
            if name == "LRANGE":
                packed = known.get(command)
                if packed is None:
                    packed = known[command] = pack(command)
                parts.append(packed)
            elif name == "EVALSHA" and type(command[2]) is int:
                split = 3 + command[2]
                head = command[:split]
                packed = known.get(head)
                if packed is None:
                    packed = known[head] = _without_count(pack(head))
                parts.append(b"*%d\r\n" % len(command))
                parts.append(packed)
                if len(command) > split:
                    parts.append(_without_count(pack(command[split:])))
            else:
                parts.append(pack(command))
        return b"".join(parts)

    def detach(self) -> list[AbstractConnection]:
        """Stop using the held connections; returns them, for :meth:`release`."""
        held, self._held, self._idle = self._held, [], []
        return held

    async def release(self, connections: Sequence[AbstractConnection]) -> None:
        for connection in connections:
            with contextlib.suppress(Exception):  # a connection of a closed loop may not close
                await self._pool.release(connection)


_KNOWN_KEPT = 65_536
"""Packed commands and heads a transport keeps (then it starts afresh)."""


def _without_count(packed: bytes) -> bytes:
    """A packed command's arguments, without the count that starts it (``*<n>\\r\\n``)."""
    return packed[packed.index(b"\r\n") + 2 :]


def _reads_fast(connection: AbstractConnection) -> bool:
    """Whether the commands can be written to the connection's stream and the replies taken from
    its hiredis reader directly: its own parser, and redis-py's own send_packed_command,
    read_response and can_read (a class that overrides one, a test's fault injection or a
    bench's counter, gets its own)."""
    kind = type(connection)
    return (
        type(connection._parser) is _AsyncHiredisParser
        and kind.read_response is AbstractConnection.read_response
        and kind.send_packed_command is AbstractConnection.send_packed_command
        and getattr(kind, _CAN_READ_NAME) is getattr(AbstractConnection, _CAN_READ_NAME)
    )


def _stale(parser: Any) -> bool:
    """redis-py's can_read of an idle hiredis connection, without its two coroutines: unread
    data, an end of file, or a parser already disconnected."""
    return (
        not parser._connected
        or parser._reader.has_data()
        or parser._stream.at_eof()
        or bool(parser._stream._buffer)
    )


async def _send(connection: AbstractConnection, packed: bytes | list[bytes]) -> None:
    """redis-py's send_packed_command of a connected connection, without its own timeout, which
    the exchange's deadline covers: redis-py's is an ``asyncio.wait_for``, a task and an event
    loop iteration more per write. Errors as redis-py's: the connection disconnected, an
    OSError raised as a ConnectionError."""
    writer: Any = connection._writer
    try:
        if isinstance(packed, bytes):
            writer.write(packed)
        else:
            writer.writelines(packed)
        await writer.drain()
    except OSError as exc:
        await connection.disconnect(nowait=True)
        number, message = exc.args[:2] if len(exc.args) > 1 else ("UNKNOWN", exc)
        raise RedisConnectionError(f"Error {number} while writing to socket. {message}.") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


async def _read_replies(connection: AbstractConnection, count: int) -> list[Any]:
    """``count`` replies, read as redis-py's read_response reads each, without its layers of
    calls per reply (about a microsecond a reply, measured: a twentieth of a turn's client CPU):
    an error reply is kept as its exception, a connection error raised, a RESP3 push message
    handed to the parser's handler (not a reply); any failure (a timeout, a cancel, a closed
    socket) disconnects the connection, so it goes back clean."""
    parser: Any = connection._parser
    gets = parser._reader.gets
    push = parser._hiredis_PushNotificationType or ()  # hiredis before 3.2: none
    replies: list[Any] = []
    try:
        if not parser._connected:
            raise RedisConnectionError("the connection was closed")
        while len(replies) < count:
            reply = gets()
            while reply is NOT_ENOUGH_DATA:
                await parser.read_from_socket()
                reply = gets()
            if isinstance(reply, RedisConnectionError):
                raise reply
            if isinstance(reply, push):
                await parser.handle_push_response(reply)
                continue
            if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
                raise reply[0]
            replies.append(reply)
    except OSError as exc:
        await connection.disconnect(nowait=True)
        raise RedisConnectionError(
            f"Error while reading from {connection._host_error()} : {exc.args}"
        ) from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    if connection.health_check_interval:
        connection.next_health_check = (
            asyncio.get_running_loop().time() + connection.health_check_interval
        )
    return replies


class ClusterTransport:
    """Commands through a cluster client: a batch is a non-transactional cluster pipeline, which
    sends each node its share in one write and retries redirected commands on their new node."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    async def execute(self, command: Command) -> Any:
        try:
            return await self._client.execute_command(*command)
        except AttributeError as exc:
            raise _closed_under_it(exc) from exc
        except ClusterError as exc:
            if not _gave_up_redirecting(exc):
                raise
            (reply,) = await self._redirected(command)
            if isinstance(reply, Exception):
                raise reply from None
            return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except AttributeError as exc:
            raise _closed_under_it(exc) from exc
        for index, reply in enumerate(replies):
            if isinstance(reply, ClusterError) and _gave_up_redirecting(reply):
                (replies[index],) = await self._redirected(commands[index])
        return replies

    async def _redirected(self, command: Command) -> list[Any]:
        """A command redis-py gave up on mid-resharding, sent again with its ASKING on the same
        connection (see :mod:`._cluster`)."""
        from chatstate.stores.redis._cluster import run_on_owner

        return await run_on_owner(self._client, [command])

    def detach(self) -> list[AbstractConnection]:
        return []

    async def release(self, connections: Sequence[AbstractConnection]) -> None:
        pass


def _gave_up_redirecting(error: ClusterError) -> bool:
    # redis-py's "TTL exhausted": every try was redirected (MOVED, ASK, TRYAGAIN), none ran.
    return "TTL exhausted" in str(error)


def _closed_under_it(exc: AttributeError) -> RedisConnectionError:
    # redis-py 8.1's cluster client, after a node fails, disconnects that node's idle
    # connections while another task may be taking one of them: that task then writes to a
    # connection whose stream is gone (AttributeError on None). A lost connection, to the store.
    return RedisConnectionError(f"a cluster connection was closed while in use ({exc})")
