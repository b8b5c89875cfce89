"""The near cache, an option of any store: two instances sharing one backend (as two processes
share one Redis), a bounded staleness, strict mode, and the faults the old wrapper had."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from chatstate import ConfigurationError, Message, NearCache, RedisStateStore
from chatstate.stores import BackendStore, SessionSnapshot
from chatstate.testing.redis_server import RedisServer

from .conftest import FakeClock
from .dict_backend import DictBackend


def _turn(text: str) -> list[Message]:
    return [Message(role="user", content=text), Message(role="assistant", content=f"re: {text}")]


class CountingBackend(DictBackend):
    """Counts the reads that reach the backend: what a round trip would be on Redis."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.reads: list[int | None] = []

    async def read(self, session_id: str, **options: Any) -> Any:
        self.reads.append(options["limit"])
        return await super().read(session_id, **options)


@pytest.fixture
def backend(clock: FakeClock) -> CountingBackend:
    return CountingBackend(clock)


def _instances(
    backend: CountingBackend, clock: FakeClock, staleness: float, **options: Any
) -> tuple[BackendStore[bytes], BackendStore[bytes]]:
    """This instance, with a near cache; another, without."""
    near = NearCache(max_staleness=timedelta(seconds=staleness), clock=clock)
    return BackendStore(backend, near_cache=near, **options), BackendStore(backend)


async def test_a_write_elsewhere_is_seen_within_the_staleness_bound(
    backend: CountingBackend, clock: FakeClock
) -> None:
    mine, other = _instances(backend, clock, 5)
    await other.append("s", _turn("one"))
    assert await mine.load("s") == _turn("one")  # a miss: read from the backend
    backend.reads.clear()
    assert await mine.load("s", limit=2) == _turn("one")  # warm: nothing asked at all
    assert backend.reads == []
    await other.append("s", _turn("two"))  # another instance writes
    clock.advance(4.9)
    assert await mine.load("s") == _turn("one")  # within the bound: the copy, as documented
    clock.advance(0.2)
    assert await mine.load("s") == _turn("one") + _turn("two")  # past it: never older
    near = mine.near_cache
    assert near is not None
    assert (near.hits, near.misses, near.version_checks) == (2, 2, 1)
    assert backend.reads == [0, None]  # a version check (no history), then the load


async def test_strict_mode_never_serves_an_old_history(
    backend: CountingBackend, clock: FakeClock
) -> None:
    mine, other = _instances(backend, clock, 0)
    await other.append("s", _turn("one"))
    assert await mine.load("s") == _turn("one")
    backend.reads.clear()
    assert await mine.load("s") == _turn("one")
    assert backend.reads == [0]  # the version alone, no history
    await other.append("s", _turn("two"))
    assert await mine.load("s") == _turn("one") + _turn("two")  # at once
    await other.delete("s")
    assert await mine.load("s") == []
    await other.append("s", _turn("one"))  # the same content again: a new version all the same
    assert await mine.load("s") == _turn("one")


async def test_own_writes_keep_the_copy_current(backend: CountingBackend, clock: FakeClock) -> None:
    mine, other = _instances(backend, clock, 5)
    await mine.append("s", _turn("one"))
    await mine.load("s")  # kept
    for text in ["two", "three"]:
        await mine.append("s", _turn(text), max_messages=4)
        assert await mine.load("s") == await other.load("s")  # a hit, and the same
    near = mine.near_cache
    assert near is not None and (near.misses, near.hits) == (1, 2)
    await other.append("s", _turn("four"))  # another instance writes between two of ours
    await mine.append("s", _turn("five"), max_messages=4)  # the versions show it: dropped
    assert await mine.load("s") == _turn("four") + _turn("five")
    assert near.misses == 2


async def test_an_append_of_a_generator_keeps_the_copy_right(
    backend: CountingBackend, clock: FakeClock
) -> None:
    """The old wrapper extended its copy with the generator the store had already consumed:
    the copy stayed short for ever, even in strict mode."""
    mine, _ = _instances(backend, clock, 0)
    await mine.append("s", _turn("one"))
    assert await mine.load("s") == _turn("one")

    def turn() -> Iterator[Message]:
        yield from _turn("two")

    await mine.append("s", turn())  # type: ignore[arg-type]
    assert await mine.load("s") == _turn("one") + _turn("two")


async def test_reading_through_the_cache_keeps_a_sliding_ttl_alive(
    backend: CountingBackend, clock: FakeClock
) -> None:
    """Read every 0.3 s with a 1 s sliding ttl: the old wrapper served from memory and never
    refreshed the expiry, and the session expired under its reader."""
    mine, _ = _instances(backend, clock, 60, sliding_ttl=1)
    await mine.append("s", _turn("one"), ttl=1)
    for _ in range(20):
        clock.advance(0.3)
        assert await mine.load("s") == _turn("one")
    assert await BackendStore(backend).load("s") == _turn("one")  # still there, for everyone


async def test_a_load_that_began_before_a_write_never_keeps_what_it_read(
    backend: CountingBackend, clock: FakeClock
) -> None:
    """A slow load read the history, then a write of this process ended, then the load ended:
    what it read is older than what the write left, and must not be kept."""
    mine, _ = _instances(backend, clock, 60)
    await mine.append("s", _turn("one"))
    read_done, write_done = anyio.Event(), anyio.Event()
    real_read = DictBackend.read

    async def slow_read(session_id: str, **options: Any) -> Any:
        page = await real_read(backend, session_id, **options)
        read_done.set()
        await write_done.wait()
        return page

    backend.read = slow_read  # type: ignore[method-assign]
    async with anyio.create_task_group() as group:
        group.start_soon(mine.load, "s")
        await read_done.wait()
        del backend.read
        await mine.append("s", _turn("two"))
        write_done.set()
    assert await mine.load("s") == _turn("one") + _turn("two")


async def test_a_restore_a_fold_or_a_save_drops_the_copy(
    backend: CountingBackend, clock: FakeClock
) -> None:
    mine, _ = _instances(backend, clock, 3600)
    await mine.append("s", _turn("one"))
    assert await mine.load("s") == _turn("one")  # kept, trusted for an hour
    assert await mine.restore("s", SessionSnapshot(_turn("two")), overwrite=True)
    assert await mine.load("s") == _turn("two")

    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        return 1, Message(role="system", content="summary")

    assert await mine.compact("s", fold)
    assert await mine.load("s") == _turn("two")[1:]
    await mine.save("s", _turn("three"))
    assert await mine.load_versioned("s") == (_turn("three"), await mine.version("s"))


async def test_a_failed_append_drops_the_copy(backend: CountingBackend, clock: FakeClock) -> None:
    """The append may have landed although it raised: the copy is not trusted after it."""
    mine, other = _instances(backend, clock, 3600)
    await mine.append("s", _turn("one"))
    assert await mine.load("s") == _turn("one")
    real_append = DictBackend.append

    async def lost_reply(session_id: str, entries: Any, **options: Any) -> Any:
        await real_append(backend, session_id, entries, **options)
        raise TimeoutError("the reply was lost")

    backend.append = lost_reply  # type: ignore[method-assign]
    backend.error_kind = lambda exc: "timeout"  # type: ignore[method-assign]
    with pytest.raises(Exception, match="reply was lost"):
        await mine.append("s", _turn("two"))
    assert await mine.load("s") == await other.load("s") == _turn("one") + _turn("two")


def test_a_near_cache_serves_one_store_and_checks_its_options(clock: FakeClock) -> None:
    near = NearCache()
    BackendStore(DictBackend(clock), near_cache=near)
    with pytest.raises(ConfigurationError, match="one store"):
        BackendStore(DictBackend(clock), near_cache=near)
    with pytest.raises(ConfigurationError, match="max_staleness"):
        NearCache(max_staleness=timedelta(seconds=-1))
    with pytest.raises(ConfigurationError, match="NearCache"):
        BackendStore(DictBackend(clock), near_cache=timedelta(1))  # type: ignore[arg-type]


@pytest.mark.redis
async def test_two_instances_on_one_redis(redis_server: RedisServer, key_prefix: str) -> None:
    """A warm load sends Redis nothing; a version check reads no history; another instance's
    write is seen once the bound has passed."""
    clock = FakeClock()
    async with Redis.from_url(redis_server.url) as client:
        near = NearCache(max_staleness=timedelta(seconds=5), clock=clock)
        mine = RedisStateStore(client, prefix=key_prefix, near_cache=near)
        other = RedisStateStore(client, prefix=key_prefix)

        async def commands() -> dict[str, int]:
            stats = await client.info("commandstats")
            return {
                name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                for name in ("evalsha", "eval", "lrange")
            }

        await other.append("s", _turn("one"))
        assert await mine.load("s") == _turn("one")  # a miss
        before = await commands()
        assert await mine.load("s", limit=2) == _turn("one")  # warm: no command at all
        assert await commands() == before
        await other.append("s", _turn("two"))
        clock.advance(5.1)
        assert await mine.load("s") == _turn("one") + _turn("two")  # checked, then read
        after = await commands()
        # Scripts: the other's append, then the check and the read; the check read no history
        # (commandstats counts the commands scripts run too: one LRANGE, the read's).
        assert after["evalsha"] + after["eval"] - before["evalsha"] - before["eval"] == 3
        assert after["lrange"] - before["lrange"] == 1
        await mine.aclose()
        await other.aclose()
