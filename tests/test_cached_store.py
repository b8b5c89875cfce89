"""The near cache with two instances sharing one Redis: a bounded staleness, and strict mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from chatstate import ConfigurationError, InMemoryStateStore, Message, RedisStateStore
from chatstate.stores.base import SessionSnapshot
from chatstate.stores.cached import CachedStore
from chatstate.testing.redis_server import RedisServer

from .conftest import FakeClock
from .plain_store import PlainStore


def _turn(text: str) -> list[Message]:
    return [Message(role="user", content=text), Message(role="assistant", content=f"re: {text}")]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_server.url) as client:
        yield client


@pytest.fixture
def instances(client: Redis, key_prefix: str) -> tuple[RedisStateStore, RedisStateStore]:
    """Two app instances' stores on one Redis (two stores, as two processes would have)."""
    return (
        RedisStateStore(client, prefix=key_prefix),
        RedisStateStore(client, prefix=key_prefix),
    )


async def _commands(client: Redis, *names: str) -> int:
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


async def test_a_write_elsewhere_is_seen_within_the_staleness_bound(
    instances: tuple[RedisStateStore, RedisStateStore], client: Redis, clock: FakeClock
) -> None:
    mine, other = instances
    cache = CachedStore(mine, max_staleness=timedelta(seconds=5), clock=clock)
    await other.append("s", _turn("one"))
    assert await cache.load("s") == _turn("one")  # a miss: read from Redis
    before = await _commands(client, "evalsha", "eval", "lrange", "get")
    assert await cache.load("s", limit=2) == _turn("one")  # warm: no command at all
    assert await _commands(client, "evalsha", "eval", "lrange", "get") == before
    await other.append("s", _turn("two"))  # another instance writes
    clock.advance(4.9)
    assert await cache.load("s") == _turn("one")  # within the bound: the copy, as documented
    clock.advance(0.2)
    assert await cache.load("s") == _turn("one") + _turn("two")  # past it: never older
    assert (cache.hits, cache.misses, cache.version_checks) == (2, 2, 1)


async def test_strict_mode_never_serves_an_old_history_and_checks_without_the_payload(
    instances: tuple[RedisStateStore, RedisStateStore], client: Redis
) -> None:
    mine, other = instances
    cache = CachedStore(mine, max_staleness=timedelta(0))
    await other.append("s", _turn("one"))
    assert await cache.load("s") == _turn("one")
    before = await _commands(client, "lrange")  # counted in scripts too
    assert await cache.load("s") == _turn("one")  # a version check, then memory
    assert await _commands(client, "lrange") == before  # no history read
    await other.append("s", _turn("two"))
    assert await cache.load("s") == _turn("one") + _turn("two")  # at once
    await other.delete("s")
    assert await cache.load("s") == []
    await other.append("s", _turn("one"))  # the same content again: a new version all the same
    assert await cache.load("s") == _turn("one")
    assert cache.version_checks == 3 and cache.hits == 1


async def test_own_writes_keep_the_copy_current(
    instances: tuple[RedisStateStore, RedisStateStore], clock: FakeClock
) -> None:
    mine, other = instances
    cache = CachedStore(mine, max_staleness=timedelta(seconds=5), clock=clock)
    await cache.append("s", _turn("one"))
    await cache.load("s")  # cached
    for text in ["two", "three"]:
        await cache.append("s", _turn(text), max_messages=4)
        assert await cache.load("s") == (await other.load("s"))  # a hit, and the same
    assert cache.misses == 1 and cache.hits == 2
    await other.append("s", _turn("four"))  # then another instance writes between two of ours
    await cache.append("s", _turn("five"), max_messages=4)  # the versions show it: copy dropped
    assert await cache.load("s") == _turn("four") + _turn("five")
    assert cache.misses == 2


async def test_versions_live_and_go_with_their_session(
    instances: tuple[RedisStateStore, RedisStateStore], client: Redis
) -> None:
    store = instances[0]
    await store.append("s", _turn("one"), ttl=60)
    version = await store.version("s")
    assert version > 0 and await store.append_versioned("s", _turn("two")) == (4, version + 1)
    assert await client.pttl(store.key("s", "meta")) == -1  # no ttl on the last write: kept
    await store.append("s", _turn("three"), ttl=60)
    assert 0 < await client.pttl(store.key("s", "meta")) <= 60_000  # expires with the list
    await store.delete("s")
    assert await client.exists(store.key("s"), store.key("s", "meta")) == 0  # nothing left
    assert await store.version("s") == 0


async def test_a_cache_needs_a_store_that_numbers_its_writes(client: Redis) -> None:
    CachedStore(RedisStateStore(client))  # every Redis store does
    with pytest.raises(ConfigurationError, match="numbers its writes"):
        CachedStore(PlainStore())  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match="versioned"):
        RedisStateStore(client, versioned=True)  # the option of 0.1.0: accepted, ignored
    with pytest.raises(ConfigurationError, match="max_staleness"):
        CachedStore(InMemoryStateStore(), max_staleness=timedelta(seconds=-1))


async def test_a_restore_or_a_fold_through_the_cache_drops_its_copy() -> None:
    clock = FakeClock()
    cached = CachedStore(InMemoryStateStore(), max_staleness=timedelta(hours=1), clock=clock)
    await cached.append("s", _turn("one"))
    assert await cached.load("s") == _turn("one")  # cached, trusted for an hour
    assert await cached.restore("s", SessionSnapshot(_turn("two")), overwrite=True) is True
    assert await cached.load("s") == _turn("two")

    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        return 1, Message(role="system", content="summary")

    assert await cached.load("s") == _turn("two")
    assert await cached.compact("s", fold) is True
    assert await cached.load("s") == _turn("two")[1:]


async def test_an_append_versioned_through_the_cache_drops_its_copy() -> None:
    cached = CachedStore(InMemoryStateStore(), max_staleness=timedelta(hours=1))
    await cached.save("s", _turn("one"))
    assert await cached.load("s") == _turn("one")
    await cached.append_versioned("s", _turn("two"))
    assert await cached.load("s") == _turn("one") + _turn("two")
