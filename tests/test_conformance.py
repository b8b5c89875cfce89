"""The conformance suite against every built-in store; adding a store adds one backend here."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis, RedisCluster

from chatstate import InMemoryStateStore, RedisStateStore, StateStore
from chatstate.stores import BackendStore, Encryption, NearCache
from chatstate.stores.cached import CachedStore
from chatstate.stores.encrypted import EncryptedStore
from chatstate.stores.sqlite import SQLiteStateStore
from chatstate.testing import StateStoreConformance
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

from .conftest import FakeClock, kinds
from .dict_backend import DictBackend
from .redis_time import advance_redis_time


@dataclass
class Backend:
    store: StateStore
    advance_time: Callable[[float], Awaitable[None]]


async def _memory() -> AsyncIterator[Backend]:
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    async with InMemoryStateStore(clock=clock) as store:
        yield Backend(store, advance)


async def _redis_backend(
    client: Redis | RedisCluster, prefix: str, **options: Any
) -> AsyncIterator[Backend]:
    async def advance(seconds: float) -> None:
        await advance_redis_time(client, seconds, match=f"{prefix}:*")

    try:
        async with RedisStateStore(client, prefix=prefix, **options) as store:
            yield Backend(store, advance)
    finally:
        await client.aclose()


async def _fakeredis(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for backend in _redis_backend(fakeredis.FakeAsyncRedis(), "test"):
        yield backend


async def _redis(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    server: RedisServer = request.getfixturevalue("redis_server")
    client = Redis.from_url(server.url)
    async for backend in _redis_backend(client, request.getfixturevalue("key_prefix")):
        yield backend


def _redis_options(
    options: Callable[[], dict[str, Any]],
) -> Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]:
    """The Redis store with options of the core: encryption, a strict near cache."""

    async def made(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
        prefix = request.getfixturevalue("key_prefix")
        async for backend in _redis_backend(client, prefix, **options()):
            yield backend

    return made


async def _cluster(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    client = RedisCluster.from_url(cluster.url)
    await client.initialize()
    async for backend in _redis_backend(client, request.getfixturevalue("key_prefix")):
        yield backend


async def _third_party(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    # A backend that implements only the backend interface, through the store core.
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    async with BackendStore(DictBackend(clock)) as store:
        yield Backend(store, advance)


async def _sealed_memory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    # Encryption as the store's own option: old and new key, so a rotated keyring.
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    keys = {"k2": secrets.token_bytes(32), "k1": secrets.token_bytes(32)}
    async with InMemoryStateStore(clock=clock, encryption=Encryption(keys=keys)) as store:
        yield Backend(store, advance)


async def _sealed_third_party(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    encryption = Encryption(keys={"k": secrets.token_bytes(32)})
    async with BackendStore(DictBackend(clock), encryption=encryption) as store:
        yield Backend(store, advance)


async def _memory_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for backend in _memory():
        yield backend


async def _cached_memory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    # Strict mode: a near cache that checks the version on every load behaves as its store.
    async for backend in _memory():
        cached = CachedStore(backend.store, max_staleness=timedelta(0))
        yield Backend(cached, backend.advance_time)


async def _cached_redis(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    server: RedisServer = request.getfixturevalue("redis_server")
    client = Redis.from_url(server.url)
    prefix = request.getfixturevalue("key_prefix")

    async def advance(seconds: float) -> None:
        await advance_redis_time(client, seconds, match=f"{prefix}:*")

    store = RedisStateStore(client, prefix=prefix)
    async with CachedStore(store, max_staleness=timedelta(0)) as cached:
        yield Backend(cached, advance)
    await client.aclose()


async def _sqlite(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    clock = FakeClock(1_700_000_000.0)  # a wall clock

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    path = request.getfixturevalue("tmp_path") / "chat.db"
    async with SQLiteStateStore(path, clock=clock) as store:
        yield Backend(store, advance)


async def _cached_sqlite(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for backend in _sqlite(request):
        async with CachedStore(backend.store, max_staleness=timedelta(0)) as cached:
            yield Backend(cached, backend.advance_time)


def _encrypted(
    make: Callable[[pytest.FixtureRequest], AsyncIterator[Backend]], cache_bytes: int = 16 << 20
) -> Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]:
    """``make``'s store, encrypted (old and new key, so a rotated keyring), the message cache on
    or off: the cache must never hide a failure."""

    async def encrypted(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
        keys = {"k2": secrets.token_bytes(32), "k1": secrets.token_bytes(32)}
        async for backend in make(request):
            store = EncryptedStore(backend.store, keys=keys, message_cache_bytes=cache_bytes)
            yield Backend(store, backend.advance_time)

    return encrypted


BACKENDS = {
    "memory": _memory_backend,
    "third-party": _third_party,
    "sealed-memory": _sealed_memory,
    "sealed-third-party": _sealed_third_party,
    "cached-memory": _cached_memory,
    "cached-redis": _cached_redis,
    "sqlite": _sqlite,
    "cached-sqlite": _cached_sqlite,
    "encrypted-memory": _encrypted(_memory_backend),
    "encrypted-memory-uncached": _encrypted(_memory_backend, cache_bytes=0),
    "encrypted-redis": _encrypted(_redis),
    "encrypted-sqlite": _encrypted(_sqlite),
    "sealed-redis": _redis_options(
        lambda: {"encryption": Encryption(keys={"k": secrets.token_bytes(32)})}
    ),
    "near-cached-redis": _redis_options(
        lambda: {"near_cache": NearCache(max_staleness=timedelta(0))}
    ),
    "fakeredis": _fakeredis,
    "redis": _redis,
    "redis-cluster": _cluster,
}


@pytest.fixture(params=kinds(*BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for made in BACKENDS[request.param](request):
        yield made


class TestConformance(StateStoreConformance):
    @pytest.fixture
    def store(self, backend: Backend) -> StateStore:
        return backend.store

    @pytest.fixture
    def advance_time(self, backend: Backend) -> Callable[[float], Awaitable[None]]:
        return backend.advance_time
