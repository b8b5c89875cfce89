"""Make a Redis server see time pass, for TTL tests without sleeping."""

from __future__ import annotations

from typing import Any


async def advance_redis_time(client: Any, seconds: float, *, match: str | None = None) -> None:
    """Shorten every expiring key's TTL by ``seconds``; a key whose time runs out is deleted.

    Redis keeps its own clock, so instead of moving it the test moves the deadlines: to every
    reader, that is the same as time passing. ``match`` limits it to the keys of one test. Works on
    a Redis or a RedisCluster client.
    """
    shift = round(seconds * 1000)
    async for key in client.scan_iter(match=match, count=1000):
        remaining = await client.pttl(key)
        if remaining < 0:
            continue  # no expiry (-1), or gone meanwhile (-2)
        if remaining <= shift:
            await client.delete(key)
        else:
            await client.pexpire(key, remaining - shift)
