"""The Redis lease that serialises the turns of one session across instances."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from types import TracebackType
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from chatstate.errors import LeaseTimeoutError, StoreError

if TYPE_CHECKING:
    from chatstate.stores.redis import Execute, _Script

logger = logging.getLogger("chatstate.redis")

# Only the holder of the token may extend or release the lease: a lease that expired and was taken
# by another instance must not be cut short by its late former owner.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLease:
    """``async with`` holds the lease at ``key``: SET NX PX with a random token, renewed every
    third of its ttl while held, released (only if still ours) on exit."""

    __slots__ = ("_deadline", "_execute", "_key", "_release", "_renew", "_renewer", "_session_id",
                 "_timeout", "_token", "_ttl_ms")  # fmt: skip

    def __init__(
        self,
        execute: Execute,
        key: str,
        session_id: str,
        *,
        ttl: float,
        timeout: float,
        renew: _Script,
        release: _Script,
    ) -> None:
        self._execute = execute
        self._key = key
        self._session_id = session_id
        self._ttl_ms = max(1, round(ttl * 1000))
        self._timeout = timeout
        self._token = secrets.token_hex(16)
        self._renew = renew
        self._release = release
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        deadline = time.monotonic() + self._timeout
        pause = 0.002
        while not await self._take():
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseTimeoutError(
                    f"the lease of session {self._session_id!r} was held by another turn for "
                    f"more than {self._timeout:g} s",
                    session_id=self._session_id,
                )
            # Jittered exponential backoff, so waiting instances do not retry in lockstep.
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(pause * 2, 0.1)
        self._renewer = asyncio.create_task(self._keep_renewing(), name="chatstate-lease-renew")

    async def _take(self) -> bool:
        try:
            taken = await self._execute("SET", self._key, self._token, "NX", "PX", self._ttl_ms)
            return taken is not None
        except RedisError as exc:
            raise StoreError(
                f"taking the lease of session {self._session_id!r} failed: "
                f"{type(exc).__name__}: {exc}",
                session_id=self._session_id,
            ) from exc

    async def _keep_renewing(self) -> None:
        interval = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                kept = await self._renew.run(
                    self._execute, (self._key,), self._token, self._ttl_ms, repeatable=True
                )
            except Exception as exc:  # a passing fault: try again at the next interval
                logger.warning("renewing the lease of session %r failed: %s", self._session_id, exc)
                continue
            if not kept:
                logger.warning(
                    "the lease of session %r expired while its turn ran (turn longer than the "
                    "lease ttl, or the process stalled)",
                    self._session_id,
                )
                return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.wait([renewer])  # unlike `await renewer`, never eats our own cancel
        try:
            await self._release.run(self._execute, (self._key,), self._token, repeatable=True)
        except Exception as error:  # it expires by itself; the turn itself went well
            logger.warning("releasing the lease of session %r failed: %s", self._session_id, error)
