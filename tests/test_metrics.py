"""`await store.metrics()` on every built-in store and on an instrumented third-party store."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis, RedisCluster

from chatstate import (
    InMemoryStateStore,
    InvalidSessionIdError,
    Message,
    RedisStateStore,
    StoreError,
)
from chatstate.monitoring import LatencyPercentiles, StateMetrics
from chatstate.stores import BackendStore
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

from .conftest import FakeClock
from .dict_backend import DictBackend


def _turn(index: int, size: int = 100) -> list[Message]:
    return [
        Message(role="user", content=f"{index:06d}" + "q" * size),
        Message(role="assistant", content=f"{index:06d}" + "a" * size),
    ]


def test_latency_percentiles_are_nearest_rank() -> None:
    summary = LatencyPercentiles.of([float(n) for n in range(1, 101)])
    assert (summary.count, summary.p50, summary.p95, summary.p99) == (100, 50.0, 95.0, 99.0)
    assert LatencyPercentiles.of([]) == LatencyPercentiles(0, None, None, None)


async def test_the_in_memory_store_reports_its_state_and_traffic(clock: FakeClock) -> None:
    store = InMemoryStateStore(max_sessions=50, clock=clock)
    for index in range(60):  # 10 more than the cap: 10 evictions
        await store.append(f"s{index}", _turn(index), max_messages=20, ttl=100)
    for index in range(11):  # 2 + 22 messages: the last two appends trim to 20
        await store.append("s59", _turn(index), max_messages=20, ttl=1000)
    await store.load("s59")
    await store.save("saved", _turn(0))  # the cap evicts the least recently used: s10
    await store.delete("s10")  # gone already
    clock.advance(101)
    await store.load("s11")  # expired: reclaimed on access
    metrics = await store.metrics()
    assert isinstance(metrics, StateMetrics)
    assert metrics.active_sessions == 2  # the others expired: s59 (longer TTL) and saved (none)
    assert metrics.avg_history_size == (20 + 2) / 2
    assert (metrics.loads, metrics.appends, metrics.saves, metrics.deletes) == (2, 71, 1, 1)
    assert metrics.trims == 2 and metrics.evictions == 11 and metrics.expirations == 48
    assert metrics.errors == 0
    assert metrics.load_latency.count == 1 and metrics.save_latency.count == 5 + 1
    assert 0 < metrics.load_latency.p50 <= metrics.load_latency.p99  # type: ignore[operator]


async def test_the_in_memory_storage_estimate_is_of_the_right_size() -> None:
    store = InMemoryStateStore()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(500):
        await store.append(f"s{index}", [m for n in range(10) for m in _turn(index * 10 + n)])
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert 0.67 * heap < (await store.metrics()).storage_used < 1.5 * heap


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_server.url) as client:
        yield client


async def _scans(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


async def test_the_redis_store_reports_every_instance_s_sessions_and_its_own_traffic(
    client: Redis, key_prefix: str
) -> None:
    writer = RedisStateStore(client, prefix=key_prefix)
    await asyncio.gather(
        *(writer.append(f"s{n}", _turn(n), max_messages=3, ttl=60) for n in range(40))
    )
    await writer.append("s0", _turn(1), max_messages=3)  # 4 > 3: trimmed
    await client.set(writer.key("wrong"), "not a list")
    with pytest.raises(StoreError):
        await writer.load("wrong")
    with pytest.raises(InvalidSessionIdError):
        await writer.load("")  # bad input is not a store error
    await client.delete(writer.key("wrong"))
    await client.set("expiring-now", 1, px=1)
    await asyncio.sleep(0.01)
    await client.exists("expiring-now")  # expired on access: the server counts it

    reader = RedisStateStore(client, prefix=key_prefix)  # another instance sees every session
    metrics = await reader.metrics()
    assert metrics.active_sessions == 40
    assert metrics.avg_history_size == pytest.approx((39 * 2 + 3) / 40, rel=0.2)  # sampled
    measured = 0
    for n in range(40):
        measured += await client.memory_usage(writer.key(f"s{n}"), samples=0) or 0
    assert 0.7 * measured < metrics.storage_used < 1.3 * measured
    assert metrics.expirations >= 1
    assert (metrics.loads, metrics.appends, metrics.errors) == (0, 0, 0)  # its own traffic
    mine = await writer.metrics()
    assert (mine.appends, mine.trims, mine.errors, mine.loads) == (41, 1, 1, 0)
    assert mine.save_latency.count == 41 and mine.save_latency.p50 is not None


async def test_the_redis_census_never_scans_the_keyspace_in_one_call(
    client: Redis, key_prefix: str
) -> None:
    store = RedisStateStore(client, prefix=key_prefix, census_keys=1000)
    for start in range(0, 3500, 500):
        await asyncio.gather(*(store.append(f"c{n}", _turn(n)) for n in range(start, start + 500)))
    seen: list[int] = []
    for _ in range(4):
        before = await _scans(client)
        seen.append((await store.metrics()).active_sessions)
        assert await _scans(client) - before <= 3  # about 1,000 keys a call, never all 3,500
    assert seen[0] == 1000  # the first pass, partial: what it has seen
    assert seen[-1] == 3500  # after the pass completed: all of them


async def test_the_census_counts_a_cluster_s_sessions_on_every_node(
    redis_cluster: LocalRedisCluster, key_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    async with RedisStateStore(client, prefix=key_prefix) as store:
        await asyncio.gather(*(store.append(f"n{n}", _turn(n)) for n in range(30)))
        metrics = await store.metrics()
        assert metrics.active_sessions == 30 and metrics.avg_history_size == 2
    await client.aclose()


async def test_a_store_on_a_backend_of_your_own_has_the_same_metrics(clock: FakeClock) -> None:
    store = BackendStore(DictBackend(clock))
    for n in range(5):
        await store.append(f"s{n}", _turn(n), max_messages=3, ttl=10)
    await store.append("s0", _turn(9), max_messages=3, ttl=10)
    await store.save("kept", _turn(1))
    await store.load("kept")
    await store.delete("s4")
    with pytest.raises(InvalidSessionIdError):  # bad input is not an error of the store
        await store.load("")
    metrics = await store.metrics()
    assert metrics.active_sessions == 5  # s0..s3 and kept
    assert metrics.avg_history_size == pytest.approx((3 + 2 * 3 + 2) / 5)
    assert (metrics.appends, metrics.saves, metrics.loads, metrics.deletes) == (6, 1, 1, 1)
    assert metrics.trims == 1 and metrics.errors == 0
    assert 0 < metrics.storage_used < 11 * 300
    clock.advance(11)
    assert (await store.metrics()).active_sessions == 1  # the census sees expiry: only kept
