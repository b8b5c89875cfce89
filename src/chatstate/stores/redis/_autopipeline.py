"""Auto-pipelining: the Redis commands of concurrent callers, coalesced into pipelined writes.

On a small machine the Python client, not Redis, limits throughput: a command sent and read on its
own costs tens of microseconds of client CPU, and more connections only add waiting for the pool.
So the commands that concurrent callers submit in the same event-loop iteration go out together,
one write of many commands and one read of their replies, and each caller gets its own reply.

- **Fast path.** A caller that finds nothing pending and nothing in flight sends its command at
  once, in its own task: no extra future, no loop hop. Batching costs nothing when there is nothing
  to batch.
- **Batches.** Otherwise the command joins the queue and its caller awaits a future. The queue is
  flushed at the end of the current loop iteration into batches, each sent by a task of its own on
  a connection of its own, at most ``max_in_flight`` at once. A queue that one batch would carry
  (at most ``max_batch`` commands) is split evenly over the writes that may start, at least 8
  commands a batch: so the server runs one batch while the client reads the replies of another and
  its callers build their next commands. One batch of everything would leave the client idle while
  the server works and the server idle while the client does (measured at 100 concurrent sessions:
  about 40 % more turns a second split than whole). A longer queue fills full batches, which
  already keep both sides busy (split too, its commands waited longer: in two runs at 1,000
  sessions, the load's p99 was 3 to 4 times higher, for no more turns a second). While batches
  are in flight new commands gather for the next ones, so batches grow with the load.
- **Back-pressure.** When ``max_pending`` commands wait, a new caller waits for room before it
  queues: a slow server slows its callers down instead of growing an unbounded queue.
- **Errors.** Each command is a Lua script or a single command, atomic on its own; the batch is
  not a transaction. An error reply fails only its own caller. A connection that fails mid-batch
  fails the callers of that batch (their commands may or may not have run) and is reconnected for
  the next.
- **Cancellation.** A caller cancelled before its batch is sent drops its command; once sent, the
  command runs and its reply is read and dropped, so the connection stays in step. Batch tasks are
  never cancelled by a caller.

- **A cluster client** is initialised (its slot map read) by the first command, before it is
  sent: a cold ``RedisCluster`` under a burst of first commands misroutes them.
- **asyncio only**: redis.asyncio runs on asyncio's event loop. Under another event loop (trio)
  the first command raises :class:`~chatstate.errors.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatstate.errors import ConfigurationError
from chatstate.retry import RetryPolicy
from chatstate.stores.redis._transport import (
    PERMANENT,
    ClusterTransport,
    Command,
    CommandNotSent,
    ConnectionTransport,
    Transport,
)

logger = logging.getLogger("chatstate.redis")

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = ["AutoPipeline", "Command", "CommandNotSent"]


_MIN_BATCH = 8
"""The fewest commands a batch is split down to (see :meth:`AutoPipeline._flush`): below that, a
write's own cost (its task, its syscalls) outweighs the overlap a split buys."""


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
        # A cluster client reads its slot map before its first command (see _warm_up).
        self._cold = isinstance(client, RedisCluster)
        self.retry = retry if retry is not None else RetryPolicy(attempts=1)
        self._transport: Transport = (
            ClusterTransport(client)
            if isinstance(client, RedisCluster)
            else ConnectionTransport(client)
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
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise _not_on_asyncio() from None
            if loop is not self._loop:
                self._bind(loop)
            if self._cold:
                await self._warm_up()
            if not self.enabled:
                return await self._client.execute_command(*command)
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
            try:
                return await self.execute(*command, repeatable=repeatable, attempt=attempt + 1)
            except CommandNotSent as unsent:
                if isinstance(exc, CommandNotSent):
                    raise
                # This try was sent and no reply came: the command may have run, whatever the
                # later tries found (no connection), so the failure is not "never sent".
                raise RedisConnectionError(
                    f"{exc} (sent, and no reply came; then, retried: {unsent})"
                ) from unsent

    async def aclose(self) -> None:
        """Wait for the commands queued and in flight, then give the held connections back to the
        pool."""
        while self._batches or self._pending or self._in_flight:
            if self._pending and not self._flush_scheduled:
                self._flush()
            await asyncio.gather(*self._batches, asyncio.sleep(0), return_exceptions=True)
        await self._transport.release(self._transport.detach())

    @property
    def pending(self) -> int:
        """Commands queued now, waiting for a write (at most ``max_pending``)."""
        return len(self._pending)

    @property
    def client(self) -> RedisClient:
        """The redis-py client the commands go through."""
        return self._client

    async def ready(self) -> RedisClient:
        """The client, ready for a command sent around the pipeline (a SCAN, an INFO): checked
        to run on asyncio and, for a cluster, initialised."""
        loop = _running_loop()
        if loop is not self._loop:
            self._bind(loop)
        if self._cold:
            await self._warm_up()
        return self._client

    async def _warm_up(self) -> None:
        # Concurrent first callers all wait here: redis-py initialises under a lock of its own.
        try:
            await self._client.initialize()
        except PERMANENT:
            raise
        except (RedisError, RedisClusterException, OSError) as exc:
            raise CommandNotSent(
                f"no connection to the cluster ({type(exc).__name__}: {exc})"
            ) from exc
        self._cold = False

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
        # A queue that one write would carry is split evenly over the writes that may start
        # (see the module), at least _MIN_BATCH commands a write; a longer one keeps them busy.
        parts = 1
        if len(pending) <= self.max_batch:
            parts = max(1, min(self.max_in_flight - self._in_flight, len(pending) // _MIN_BATCH))
        size = min(self.max_batch, -(-len(pending) // parts))
        while pending and self._in_flight < self.max_in_flight:
            batch = [item for item in pending[:size] if not item[1].done()]
            del pending[:size]
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


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise _not_on_asyncio() from None


def _not_on_asyncio() -> ConfigurationError:
    return ConfigurationError(
        "the Redis store runs on asyncio (redis.asyncio), and this code runs under another "
        "event loop (trio?): run it with asyncio (anyio.run(..., backend='asyncio')), or use "
        "the in-memory or SQLite store, which run on both"
    )
