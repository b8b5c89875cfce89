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
from chatstate.stores.postgres import PostgresStateStore
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


Opener = Callable[[pytest.FixtureRequest, FakeClock], Any]


def _on_wall_clock(
    open_store: Opener, options: Callable[[], dict[str, Any]]
) -> Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]:
    """A store that keeps expiry by a wall clock it is given (SQLite, PostgreSQL): a fake one."""

    async def made(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
        clock = FakeClock(1_700_000_000.0)

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        async with open_store(request, clock, **options()) as store:
            yield Backend(store, advance)

    return made


def _sqlite_with(
    options: Callable[[], dict[str, Any]],
) -> Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]:
    def open_store(request: pytest.FixtureRequest, clock: FakeClock, **more: Any) -> Any:
        path = request.getfixturevalue("tmp_path") / "chat.db"
        return SQLiteStateStore(path, clock=clock, **more)

    return _on_wall_clock(open_store, options)


def _postgres_with(
    options: Callable[[], dict[str, Any]],
) -> Callable[[pytest.FixtureRequest], AsyncIterator[Backend]]:
    def open_store(request: pytest.FixtureRequest, clock: FakeClock, **more: Any) -> Any:
        dsn, schema = request.getfixturevalue("postgres_dsn"), request.getfixturevalue("pg_schema")
        return PostgresStateStore.from_url(dsn, schema=schema, clock=clock, **more)

    return _on_wall_clock(open_store, options)


def _keys() -> dict[str, Any]:
    # Old and new key, so a rotated keyring.
    keys = {"k2": secrets.token_bytes(32), "k1": secrets.token_bytes(32)}
    return {"encryption": Encryption(keys=keys)}


def _strict_near_cache() -> dict[str, Any]:
    # Strict mode: a near cache that checks the version on every load behaves as its store.
    return {"near_cache": NearCache(max_staleness=timedelta(0))}


BACKENDS = {
    "memory": _memory_backend,
    "encrypted-memory": _sealed_memory,
    "third-party": _third_party,
    "encrypted-third-party": _sealed_third_party,
    "sqlite": _sqlite_with(dict),
    "uncompressed-sqlite": _sqlite_with(lambda: {"compress_over": None}),
    "encrypted-sqlite": _sqlite_with(_keys),
    "near-cached-sqlite": _sqlite_with(_strict_near_cache),
    "postgres": _postgres_with(dict),
    "encrypted-postgres": _postgres_with(_keys),
    "encrypted-redis": _redis_options(_keys),
    "near-cached-redis": _redis_options(_strict_near_cache),
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
