"""Durable writes: a write acknowledged only once replicas have it too (``durability="replicas"``).

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so a
primary that dies can take acknowledged writes with it, and the replica promoted in its place
never had them. With the option on, every write of a session (its script) is followed by
``WAIT <replicas> <timeout>`` on the same connection, in the same write, so one round trip: WAIT
answers once that many replicas have acknowledged everything the connection wrote, or at the
timeout with how many did. Fewer than asked: :class:`ReplicationTimeoutError`, which the store
reports as :class:`~chatstate.errors.OutcomeUnknownError` (the primary applied it; a failover may
still lose it); the write id makes the caller's retry safe. A retry that the session recognises
rewrites its remembered ids (``lua/_writes.lua``), so its own WAIT also covers the first run.

The default path (``durability="primary"``) never comes here: writes go through the
auto-pipeline. Durable writes do not share pipelined writes with other callers: each is one
exchange (script, WAIT) on a connection of its own (at most :data:`MAX_EXCHANGES` at once), on
a standalone server through redis-py's pipeline, on a cluster to the node that owns the
session's slot (:mod:`._cluster`: MOVED and ASK followed, an ASK's ASKING in the same write as
the script, on the same connection).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatstate.retry import RetryPolicy
from chatstate.stores.redis._autopipeline import AutoPipeline
from chatstate.stores.redis._cluster import run_on_owner
from chatstate.stores.redis._transport import CommandNotSent

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = ["MAX_EXCHANGES", "Durability", "DurableWrites", "ReplicationTimeoutError"]

logger = logging.getLogger("chatstate.redis")

Durability: TypeAlias = Literal["primary", "replicas"]
"""When a write is acknowledged: once the primary applied it (``"primary"``, Redis's own
promise), or once ``min_replicas`` replicas have it too (``"replicas"``)."""


MAX_EXCHANGES = 32
"""Durable writes in flight at once (each on a connection of its own); the rest wait their turn."""


class ReplicationTimeoutError(RedisTimeoutError):
    """A write was applied by the primary, and fewer replicas than required acknowledged it
    within the durability timeout: a failover may lose it (its outcome is unknown)."""


class DurableWrites:
    """Runs a write's command followed by ``WAIT`` in one exchange (see the module)."""

    def __init__(
        self,
        pipeline: AutoPipeline,
        *,
        min_replicas: int,
        timeout: float,
        retry: RetryPolicy,
    ) -> None:
        self._pipeline = pipeline
        self.min_replicas = min_replicas
        self.timeout = timeout
        self._wait = ("WAIT", min_replicas, max(1, round(timeout * 1000)))
        self._retry = retry
        self._room: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    async def execute(self, *command: Any, repeatable: bool = False, attempt: int = 1) -> Any:
        """The command's reply, once ``min_replicas`` replicas have it; raises its error, or
        ReplicationTimeoutError. Retried as the auto-pipeline retries (never after a
        ReplicationTimeoutError: the write is applied, and trying again waits again)."""
        try:
            client = await self._pipeline.ready()
            async with self._limit():
                if isinstance(client, RedisCluster):
                    reply, acknowledged = await self._on_cluster(client, command)
                else:
                    reply, acknowledged = await self._on_server(client, command)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if attempt >= self._retry.attempts or not (
                repeatable or isinstance(exc, CommandNotSent)
            ):
                raise
            logger.debug("retrying %s after %s: %s", command[0], type(exc).__name__, exc)
            await asyncio.sleep(self._retry.delay(attempt))
            return await self.execute(*command, repeatable=repeatable, attempt=attempt + 1)
        if isinstance(reply, Exception):
            raise reply
        if not isinstance(acknowledged, int) or acknowledged < self.min_replicas:
            raise ReplicationTimeoutError(
                f"{acknowledged} of the {self.min_replicas} replica(s) required acknowledged the "
                f"write within {self.timeout} s (it is applied on the primary; a failover may "
                "lose it)"
            )
        return reply

    def _limit(self) -> asyncio.Semaphore:
        # Each exchange holds a connection while its WAIT waits: at most MAX_EXCHANGES at once,
        # so a thousand concurrent writes neither exhaust a cluster node's connections (redis-py
        # raises, it does not wait) nor starve the auto-pipeline's. Per event loop: a semaphore
        # belongs to the loop that first waits on it.
        loop = asyncio.get_running_loop()
        if self._room is None or self._room[0] is not loop:
            self._room = (loop, asyncio.Semaphore(MAX_EXCHANGES))
        return self._room[1]

    async def _on_server(self, client: Redis, command: tuple[Any, ...]) -> tuple[Any, Any]:
        async with client.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.execute_command(*self._wait)
            reply, acknowledged = await pipe.execute(raise_on_error=False)
        return reply, acknowledged

    async def _on_cluster(self, client: RedisCluster, command: tuple[Any, ...]) -> tuple[Any, Any]:
        reply, acknowledged = await run_on_owner(client, [command, self._wait])
        return reply, acknowledged
