"""Turns of one session serialised across instances by the store's lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    LeaseTimeoutError,
    Message,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    RetryPolicy,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    StoreError,
)
from chatstate.stores.redis._scripts import LEASE_RELEASE
from chatstate.testing import RedisServer

from .conftest import FakeClock
from .redis_time import advance_redis_time


def _on(store: RedisStateStore, clock: FakeClock) -> RedisStateStore:
    """``store``, its leases waiting and renewing on ``clock`` (RedisStateStore takes no
    ``clock=``; the core's clock is what its leases read); the server's expiry is moved by
    :func:`advance_redis_time`."""
    store.clock = clock
    return store


@pytest.fixture
async def stores(
    redis_server: RedisServer, key_prefix: str
) -> AsyncIterator[list[RedisStateStore]]:
    """Two stores on two connection pools: two app instances."""
    async with (
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as first,
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as second,
    ):
        yield [first, second]


async def _concurrent_turns(pipes: Sequence[Pipeline], turns: int = 40) -> None:
    await asyncio.gather(
        *(
            pipes[index % len(pipes)].execute_with_session("shared", "user", f"q{index}")
            for index in range(turns)
        )
    )


def _recording_provider(seen: list[int]) -> ScriptedProvider:
    async def reply(messages: Sequence[Message]) -> str:
        seen.append(len(messages) - 1)  # how much history this turn was given
        await asyncio.sleep(0.001)
        return "ok"

    return ScriptedProvider(reply)


@pytest.mark.parametrize("lease", [True, False], ids=["with lease", "without lease"])
async def test_turns_from_two_instances_are_serialised_by_the_lease(
    stores: list[RedisStateStore], lease: bool
) -> None:
    seen: list[int] = []
    config = StateMiddlewareConfig(
        max_messages=-1, lease_ttl=timedelta(seconds=5) if lease else None
    )
    pipes = [
        Pipeline(StateMiddleware(store, config), ProviderMiddleware(_recording_provider(seen)))
        for store in stores
    ]
    await _concurrent_turns(pipes)
    if lease:
        assert seen == list(range(0, 80, 2))  # every turn saw every turn before it
    else:
        assert seen != list(range(0, 80, 2))  # the race the lease prevents: stale histories
    assert len(await stores[0].load("shared")) == 80  # appends are atomic either way


async def test_a_lease_whose_holder_died_expires_and_is_taken_over(
    stores: list[RedisStateStore], clock: FakeClock
) -> None:
    store = _on(stores[0], clock)
    client: Redis = store.client  # type: ignore[assignment]
    key = store.key("s", "lease")
    await client.set(key, "token-of-a-dead-instance", px=300)
    async with anyio.create_task_group() as group:
        taken = anyio.Event()

        async def take() -> None:
            async with store.lease("s", ttl=5, timeout=5):
                assert await client.get(key) != b"token-of-a-dead-instance"
                taken.set()

        group.start_soon(take)
        await clock.sleeping()  # polling the server, with backoff: the dead holder's is there
        assert not taken.is_set()
        await advance_redis_time(client, 0.3, match=key)  # ...until it runs out
        clock.advance(0.3)
    assert taken.is_set()


async def test_a_lease_is_never_released_by_another_than_its_owner(
    stores: list[RedisStateStore],
) -> None:
    first, second = stores
    client: Redis = first.client  # type: ignore[assignment]
    key = first.key("s", "lease")
    async with first.lease("s", ttl=5, timeout=1):
        assert await client.eval(LEASE_RELEASE.source, 1, key, "not-a-token") == 0  # type: ignore[misc]
        with pytest.raises(LeaseTimeoutError, match="'s'"):
            async with second.lease("s", ttl=5, timeout=0.2):
                pass
    # A holder whose lease expired (it stalled: no renewals) and was taken over leaves the new
    # holder's lease alone: neither its renewal nor its release touches it.
    assert await first.backend.acquire_lease("s", "stalled-holder", 0.2)
    await advance_redis_time(client, 0.3, match=key)
    async with second.lease("s", ttl=5, timeout=1):
        assert not await first.backend.renew_lease("s", "stalled-holder", 5)
        assert not await first.backend.release_lease("s", "stalled-holder")
        assert await client.exists(key) == 1
    assert await client.exists(key) == 0


async def test_a_held_lease_is_renewed(stores: list[RedisStateStore], clock: FakeClock) -> None:
    store = _on(stores[0], clock)
    client: Redis = store.client  # type: ignore[assignment]
    key = store.key("s", "lease")
    async with store.lease("s", ttl=0.3, timeout=1):
        for _ in range(8):  # 0.8 s, well past the ttl, a renewal every third of it
            await clock.sleeping()
            await advance_redis_time(client, 0.1, match=key)
            clock.advance(0.1)
        await clock.sleeping()
        assert await client.exists(key) == 1
        with pytest.raises(LeaseTimeoutError):
            async with stores[1].lease("s", ttl=0.3, timeout=0.1):
                pass


async def test_the_in_memory_store_has_a_lease_too() -> None:
    store = InMemoryStateStore()
    seen: list[int] = []
    config = StateMiddlewareConfig(max_messages=-1, lock=False, lease_ttl=timedelta(seconds=5))
    pipes = [
        Pipeline(StateMiddleware(store, config), ProviderMiddleware(_recording_provider(seen)))
        for _ in range(2)
    ]
    await _concurrent_turns(pipes)
    assert seen == list(range(0, 80, 2))
    async with store.lease("s", ttl=5, timeout=1):
        with pytest.raises(LeaseTimeoutError):
            async with store.lease("s", ttl=5, timeout=0.05):
                pass
    async with store.lease("s", ttl=5, timeout=0):  # given back: free at once
        pass


def test_a_lease_needs_a_store_that_has_one() -> None:
    class NoLeases:
        async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
            return []

        async def append(self, session_id: str, messages: Any, **options: Any) -> int:
            return 0

    with pytest.raises(ConfigurationError, match="lease"):
        StateMiddleware(NoLeases(), StateMiddlewareConfig(lease_ttl=timedelta(seconds=5)))  # type: ignore[arg-type]
    for bad in ({"lease_ttl": 5}, {"lease_timeout": timedelta(0)}):
        with pytest.raises(ConfigurationError):
            StateMiddlewareConfig(**bad)  # type: ignore[arg-type]


async def test_a_lease_on_an_unreachable_server_raises_a_store_error() -> None:
    client = Redis(port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client, retry=RetryPolicy(attempts=3, backoff=0))  # no waits
    with pytest.raises(StoreError, match="lease of session 's'"):
        async with store.lease("s", ttl=5, timeout=1):
            pass
    await client.aclose()
