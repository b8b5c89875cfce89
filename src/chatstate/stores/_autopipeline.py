"""Auto-pipelining: the Redis commands of concurrent callers, coalesced into pipelined writes.

On a small machine the Python client, not Redis, limits throughput: a command sent and read on its
own costs tens of microseconds of client CPU, and more connections only add waiting for the pool.
So the commands that concurrent callers submit in the same event-loop iteration go out together,
one write of many commands and one read of their replies, and each caller gets its own reply.

- **Fast path.** A caller that finds nothing pending and nothing in flight sends its command at
  once, in its own task: no extra future, no loop hop. Batching costs nothing when there is nothing
  to batch.
- **Batches.** Otherwise the command joins the queue and its caller awaits a future. The queue is
  flushed at the end of the current loop iteration into batches of at most ``max_batch`` commands,
  each sent by a task of its own on a connection of its own, at most ``max_in_flight`` at once.
  While they are in flight new commands gather for the next batches, so batches grow with the load.
- **Back-pressure.** When ``max_pending`` commands wait, a new caller waits for room before it
  queues: a slow server slows its callers down instead of growing an unbounded queue.
- **Errors.** Each command is a Lua script or a single command, atomic on its own; the batch is
  not a transaction. An error reply fails only its own caller. A connection that fails mid-batch
  fails the callers of that batch (their commands may or may not have run) and is reconnected for
  the next.
- **Cancellation.** A caller cancelled before its batch is sent drops its command; once sent, the
  command runs and its reply is read and dropped, so the connection stays in step. Batch tasks are
  never cancelled by a caller.

The standalone transport keeps the connections it uses (at most ``max_in_flight``) out of the
client's pool while the store lives, and checks an idle one for a closed socket before it reuses it
(the server may have restarted since). The cluster transport hands each batch to redis-py's cluster
pipeline, which groups the commands per node and follows redirections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis
except ImportError:  # pragma: no cover - redis-py without its hiredis extra
    hiredis = None  # type: ignore[assignment]

from chatstate.retry import RetryPolicy

logger = logging.getLogger("chatstate.redis")

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = ["AutoPipeline", "Command", "CommandNotSent"]

Command: TypeAlias = tuple[Any, ...]
"""A Redis command and its arguments: ``("LRANGE", key, -20, -1)``."""


# Connecting failed for a reason that trying again will not change.
_PERMANENT = (AuthenticationError, AuthorizationError)


class CommandNotSent(RedisConnectionError):
    """No connection to Redis could be had: the command never left the client, so trying it again
    cannot apply it twice."""


# redis-py 8 renamed Connection.can_read_destructive to can_read; both check the socket without
# blocking for buffered data or an end of file.
_CAN_READ_NAME = "can_read" if hasattr(AbstractConnection, "can_read") else "can_read_destructive"


class _Transport(Protocol):
    async def execute(self, command: Command) -> Any:
        """Send one command, return its reply; raise its error."""

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in one write; their replies, an error reply as its exception."""

    def detach(self) -> list[AbstractConnection]:
        """Stop using the connections held; returns them, for :meth:`release`."""

    async def release(self, connections: Sequence[AbstractConnection]) -> None:
        """Give connections back to the client's pool."""


class _ConnectionTransport:
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

    async def _connected(self) -> AbstractConnection:
        """A connection, connected: a failure here means no command left the client."""
        try:
            connection = await self._take()
        except _PERMANENT:
            raise
        except (RedisError, OSError) as exc:
            raise CommandNotSent(f"no connection to Redis ({type(exc).__name__}: {exc})") from exc
        if not connection.is_connected:
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except _PERMANENT:
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
        if connection.is_connected:
            # Unread data or an end of file: the server closed it (a restart, an idle timeout) or
            # it is out of step. Reconnect now rather than fail the caller's command.
            try:
                stale = await getattr(connection, _CAN_READ_NAME)()
            except (RedisConnectionError, OSError):
                stale = True
            if stale:
                await connection.disconnect()
        return connection

    async def execute(self, command: Command) -> Any:
        reply = (await self._exchange((command,)))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return await self._exchange(commands)

    async def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        connection = await self._connected()
        pack = self._pack
        if pack is not None:
            packed: bytes | list[bytes] = b"".join([pack(command) for command in commands])
        else:
            packed = connection.pack_commands(commands)
        replies: list[Any] = []
        try:
            # One deadline for the whole exchange instead of one per reply (the connection's
            # socket_timeout). A failure inside send or read (a timeout, a cancel) disconnects
            # the connection, so it goes back clean and reconnects on its next use.
            async with asyncio.timeout(connection.socket_timeout):
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

    def detach(self) -> list[AbstractConnection]:
        """Stop using the held connections; returns them, for :meth:`release`."""
        held, self._held, self._idle = self._held, [], []
        return held

    async def release(self, connections: Sequence[AbstractConnection]) -> None:
        for connection in connections:
            with contextlib.suppress(Exception):  # a connection of a closed loop may not close
                await self._pool.release(connection)


class _ClusterTransport:
    """Commands through a cluster client: a batch is a non-transactional cluster pipeline, which
    sends each node its share in one write and retries redirected commands on their new node."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    async def execute(self, command: Command) -> Any:
        return await self._client.execute_command(*command)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def detach(self) -> list[AbstractConnection]:
        return []

    async def release(self, connections: Sequence[AbstractConnection]) -> None:
        pass


class AutoPipeline:
    """Runs the commands of concurrent callers in shared pipelined writes (see the module).

    ``enabled=False`` sends every command on its own through the client, as plain redis-py does.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        enabled: bool = True,
        max_batch: int = 128,
        max_in_flight: int = 4,
        max_pending: int = 16_384,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self.retry = retry if retry is not None else RetryPolicy(attempts=1)
        self._transport: _Transport = (
            _ClusterTransport(client)
            if isinstance(client, RedisCluster)
            else _ConnectionTransport(client)
        )
        self.enabled = enabled
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Command, asyncio.Future[Any]]] = []
        self._room_waiters: list[asyncio.Future[None]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._detached: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._flush_scheduled = False
        self.batches_sent = 0
        """Pipelined writes of more than one command so far (for tests and metrics)."""
        self.commands_batched = 0
        """Commands sent in those writes."""

    async def execute(self, *command: Any, repeatable: bool = False, attempt: int = 1) -> Any:
        """Run one command; return its reply or raise its error (a redis-py exception).

        A command that failed for a passing reason is tried again by the retry policy: any
        ``repeatable`` one after a lost connection or a timeout, any other only when it never
        left the client (:class:`CommandNotSent`), so no retry applies a write twice.
        """
        try:
            if not self.enabled:
                return await self._client.execute_command(*command)
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                self._bind(loop)
            if not self._pending and not self._in_flight:
                self._in_flight = 1
                try:
                    return await self._transport.execute(command)
                finally:
                    self._in_flight -= 1
                    if self._pending and not self._flush_scheduled:
                        self._flush()
            while len(self._pending) >= self.max_pending:
                await self._wait_for_room(loop)
            future: asyncio.Future[Any] = loop.create_future()
            self._pending.append((command, future))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
            try:
                return await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    future.exception()  # the reply came as we were cancelled: mark it as seen
                raise
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Inline, not a wrapper: a call that succeeds pays nothing for the retry policy.
            retry = self.retry
            if attempt >= retry.attempts or not (repeatable or isinstance(exc, CommandNotSent)):
                raise
            logger.debug("retrying %s after %s: %s", command[0], type(exc).__name__, exc)
            await asyncio.sleep(retry.delay(attempt))
            return await self.execute(*command, repeatable=repeatable, attempt=attempt + 1)

    async def aclose(self) -> None:
        """Wait for the commands queued and in flight, then give the held connections back to the
        pool."""
        while self._batches or self._pending or self._in_flight:
            if self._pending and not self._flush_scheduled:
                self._flush()
            await asyncio.gather(*self._batches, asyncio.sleep(0), return_exceptions=True)
        await self._transport.release(self._transport.detach())

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # Futures, tasks and connections belong to one event loop; a store used from another
        # loop (a new asyncio.run) starts afresh there, and gives back what the old one held.
        if self._loop is not None:
            stale = self._transport.detach()
            if stale:
                release = loop.create_task(self._transport.release(stale))
                self._detached.add(release)
                release.add_done_callback(self._detached.discard)
        self._loop = loop
        self._pending, self._room_waiters, self._batches = [], [], set()
        self._in_flight = 0
        self._flush_scheduled = False

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._room_waiters:
                self._room_waiters.remove(waiter)
            elif not waiter.cancelled():
                self._wake_waiters()  # it was woken: pass the room on
            raise

    def _wake_waiters(self) -> None:
        room = self.max_pending - len(self._pending)
        while room > 0 and self._room_waiters:
            waiter = self._room_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = self._pending
        assert self._loop is not None
        while pending and self._in_flight < self.max_in_flight:
            batch = [item for item in pending[: self.max_batch] if not item[1].done()]
            del pending[: self.max_batch]
            if not batch:
                continue  # every caller of it was cancelled before it was sent
            self._in_flight += 1
            task = self._loop.create_task(self._send(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
        if self._room_waiters:
            self._wake_waiters()

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            if len(batch) == 1:
                try:
                    replies: list[Any] = [await self._transport.execute(batch[0][0])]
                except ResponseError as exc:
                    replies = [exc]
            else:
                self.batches_sent += 1
                self.commands_batched += len(batch)
                replies = await self._transport.execute_many([command for command, _ in batch])
        except Exception as exc:
            _fail(batch, exc)
        except asyncio.CancelledError:
            # Only the loop's shutdown cancels a batch; its callers must not hang.
            _fail(batch, RedisConnectionError("the batch was cancelled: the event loop stopped"))
            raise
        else:
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            self._in_flight -= 1
            if self._pending and not self._flush_scheduled:
                self._flush()


def _fail(batch: list[tuple[Command, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
