"""The conformance suite against every built-in store; adding a store adds one backend here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import fakeredis
import pytest

from chatstate import InMemoryStateStore, RedisStateStore, StateStore
from chatstate.testing import StateStoreConformance

from .conftest import FakeClock
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


async def _fakeredis() -> AsyncIterator[Backend]:
    client = fakeredis.FakeAsyncRedis()

    async def advance(seconds: float) -> None:
        await advance_redis_time(client, seconds)

    async with RedisStateStore(client) as store:
        yield Backend(store, advance)
    await client.aclose()


BACKENDS = {"memory": _memory, "fakeredis": _fakeredis}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for made in BACKENDS[request.param]():
        yield made


class TestConformance(StateStoreConformance):
    @pytest.fixture
    def store(self, backend: Backend) -> StateStore:
        return backend.store

    @pytest.fixture
    def advance_time(self, backend: Backend) -> Callable[[float], Awaitable[None]]:
        return backend.advance_time
