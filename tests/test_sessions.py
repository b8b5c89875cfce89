"""Session-id patterns and the conversations of a user, on every built-in store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis, RedisCluster

from chatstate import (
    ConfigurationError,
    InMemoryStateStore,
    InvalidSessionIdError,
    Message,
    RedisStateStore,
    StateStore,
    StoreError,
)
from chatstate.sessions import Conversations, temporary_session
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

from .conftest import kinds
from .redis_wire import WRITE_IDS_FIELDS


class Clock:
    """Wall-clock seconds that the test moves (starting from now: Redis expires by its own)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=kinds("memory", "redis", "redis-cluster"))
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        async with InMemoryStateStore() as memory:
            yield memory
        return
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client: Redis | RedisCluster = Redis.from_url(server.url)
    else:
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        client = RedisCluster.from_url(cluster.url)
    async with RedisStateStore(client, prefix=key_prefix) as redis_store:
        yield redis_store
    await client.aclose()


def test_the_three_id_patterns() -> None:
    assert Conversations.user_session("42") == "user-42"
    conversations = Conversations(InMemoryStateStore())
    assert conversations.session_id("42", "trip") == "user-42-conv-trip"
    temporary = {temporary_session() for _ in range(1000)}
    assert len(temporary) == 1000 and all(len(t) >= 4 + 22 for t in temporary)
    for bad in ["", "a-conv-b", "tab\there"]:
        with pytest.raises(InvalidSessionIdError):
            conversations.session_id(bad, "c")
    with pytest.raises(InvalidSessionIdError, match="too long"):
        conversations.session_id("u" * 200, "c" * 100)
    with pytest.raises(ConfigurationError, match="cannot index"):
        Conversations(object())


async def test_a_user_s_conversations_list_most_recent_first_a_page_at_a_time(
    store: StateStore,
) -> None:
    clock = Clock()
    conversations = Conversations(store, ttl=timedelta(hours=1), clock=clock)
    for name in ["a", "b", "c", "d", "e"]:
        clock.now += 1
        session_id = await conversations.record("42", name)
        await store.append(session_id, [Message(role="user", content=name)])
    clock.now += 1
    await conversations.record("42", "b")  # b is active again: first now
    pages = [
        [c.conversation_id for c in await conversations.list("42", limit=2, offset=offset)]
        for offset in (0, 2, 4, 6)
    ]
    assert pages == [["b", "e"], ["d", "c"], ["a"], []]
    first = (await conversations.list("42", limit=1))[0]
    assert first.session_id == "user-42-conv-b"
    assert abs(first.last_active.timestamp() - clock.now) < 0.01
    assert await conversations.list("someone else") == []
    with pytest.raises(ConfigurationError):
        await conversations.list("42", limit=0)


async def test_no_index_entry_outlives_its_conversation(store: StateStore) -> None:
    clock = Clock()
    short = Conversations(store, ttl=timedelta(seconds=30), clock=clock)
    await short.record("7", "old")
    clock.now += 20
    await short.record("7", "new")
    clock.now += 15  # "old" is past its 30 s, "new" is not
    assert [c.conversation_id for c in await short.list("7")] == ["new"]
    if isinstance(store, RedisStateStore):  # the index itself expires with its last entry
        client = store.client
        for kind in ("conversations", "deadlines"):
            ttl_ms = await client.pttl(store.key("user-7", kind))
            assert 49_000 < ttl_ms <= 50_000  # "new": recorded 20 s on, for 30 s
        await Conversations(store, clock=clock).record("7", "forever")  # no ttl: kept
        assert await client.pttl(store.key("user-7", "conversations")) == -1


async def test_erasing_a_user_deletes_every_conversation_and_the_index(
    store: StateStore,
) -> None:
    conversations = Conversations(store, ttl=timedelta(hours=1))
    await store.append(Conversations.user_session("9"), [Message(role="user", content="me")])
    for name in ["x", "y", "z"]:
        session_id = await conversations.record("9", name)
        await store.append(session_id, [Message(role="user", content=name)])
    await store.append("user-10-conv-x", [Message(role="user", content="another user")])
    assert await conversations.erase("9") == 3
    for session_id in ["user-9", "user-9-conv-x", "user-9-conv-y", "user-9-conv-z"]:
        assert await store.load(session_id) == []
    assert await conversations.list("9") == []
    assert await conversations.erase("9") == 0  # again: nothing left, no error
    assert await store.load("user-10-conv-x") != []  # nobody else's
    if isinstance(store, RedisStateStore):
        left = [key async for key in store.client.scan_iter(match=f"{store.prefix}:{{user-9*")]
        # Nothing but the write ids of the deletes, expiring in 10 minutes.
        assert all(key.endswith(b":meta") for key in left)
        for key in left:
            assert set(await store.client.hkeys(key)) <= WRITE_IDS_FIELDS
            assert 0 < await store.client.pttl(key) <= 600_000


async def test_a_failed_delete_of_an_erase_raises_the_store_s_error_and_a_retry_finishes() -> None:
    class Failing(InMemoryStateStore):
        failing: str | None = "user-9-conv-y"

        async def delete(self, session_id: str) -> bool:
            if session_id == self.failing:
                raise StoreError("the store is down")
            return await super().delete(session_id)

    store = Failing()
    conversations = Conversations(store)
    for name in ["x", "y", "z"]:
        await store.append(
            await conversations.record("9", name), [Message(role="user", content=name)]
        )
    with pytest.raises(StoreError, match="the store is down"):  # not an ExceptionGroup
        await conversations.erase("9")
    store.failing = None
    assert await conversations.erase("9") == 3  # the index went last: nothing was lost
    assert [await store.load(f"user-9-conv-{name}") for name in "xyz"] == [[], [], []]
