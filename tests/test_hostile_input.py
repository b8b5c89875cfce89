"""Bad and hostile input beyond what the conformance suite covers: oversized messages, data written
by someone else, and credentials that must never show."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.asyncio import Redis

from chatstate import (
    InMemoryStateStore,
    InvalidMessageError,
    Message,
    RedisStateStore,
    StateLoadError,
    StateStore,
)
from chatstate.stores._codec import encode_entry
from chatstate.testing.redis_server import RedisServer

from .redis_wire import WRITE_IDS_FIELDS


def _user(text: str) -> Message:
    return Message(role="user", content=text)


@pytest.fixture(params=["memory", "redis"])
async def limited(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """A store that takes messages of at most 1,000 bytes of JSON."""
    if request.param == "memory":
        async with InMemoryStateStore(max_message_bytes=1000) as store:
            yield store
        return
    client = fakeredis.FakeAsyncRedis()
    async with RedisStateStore(client, max_message_bytes=1000) as redis_store:
        yield redis_store
    await client.aclose()


async def test_an_oversized_message_is_refused_and_nothing_of_its_call_is_stored(
    limited: StateStore,
) -> None:
    await limited.save("s", [_user("kept")])
    turn = [_user("fits"), _user("x" * 2000)]
    with pytest.raises(InvalidMessageError, match=r"messages\[1\] is 2,0\d\d bytes.*1,000"):
        await limited.append("s", turn)
    with pytest.raises(InvalidMessageError, match="max_message_bytes"):
        await limited.save("s", turn)
    assert await limited.load("s") == [_user("kept")]
    assert await limited.append("s", [_user("y" * 900)]) == 2  # under the limit: fine


async def test_the_redis_store_refuses_messages_over_1_mib_by_default() -> None:
    client = fakeredis.FakeAsyncRedis()
    store = RedisStateStore(client)
    with pytest.raises(InvalidMessageError, match="1,048,576"):
        await store.append("s", [_user("x" * (1 << 20))])
    assert await store.append("s", [_user("x" * 1000)]) == 1
    unlimited = RedisStateStore(client, max_message_bytes=None)
    assert await unlimited.append("s", [_user("x" * (1 << 20))]) == 2
    await client.aclose()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_server.url) as client:
        yield client


async def test_a_list_over_the_bound_written_by_someone_else_is_read_and_trimmed(
    client: Redis, key_prefix: str
) -> None:
    store = RedisStateStore(client, prefix=key_prefix)
    stored = [_user(f"m{index}") for index in range(100)]
    await client.rpush(store.key("s"), *(encode_entry(message) for message in stored))
    assert await store.load("s", limit=20) == stored[-20:]  # the newest, never the whole list
    assert await store.append("s", [_user("new")], max_messages=20) == 20  # and trimmed at once
    assert await store.load("s") == [*stored[-19:], _user("new")]


async def test_delete_leaves_no_history_of_the_session_behind(
    client: Redis, key_prefix: str
) -> None:
    store = RedisStateStore(client, prefix=key_prefix)
    await store.append("gone", [_user("a")], ttl=60)
    await store.append("kept", [_user("b")])
    async with store.lease("gone", ttl=5, timeout=1):
        pass  # a lease is released on exit: it leaves nothing behind either
    assert await store.delete("gone") is True
    # Only the ids of its last writes, for 10 minutes, so a retried write is still recognised.
    left = [key async for key in client.scan_iter(match=f"{key_prefix}:{{gone}}*")]
    assert left == [store.key("gone", "meta").encode()]
    assert set(await client.hkeys(left[0])) <= WRITE_IDS_FIELDS
    assert 0 < await client.pttl(left[0]) <= 600_000
    assert await store.load("kept") == [_user("b")]


async def test_credentials_never_show_in_reprs_errors_or_logs(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The server has no such user: every call fails, and says why without the password.
    url = f"redis://alice:s3cr3t-pw@127.0.0.1:{redis_server.port}/0"
    caplog.set_level(logging.DEBUG)
    async with RedisStateStore.from_url(url, prefix="creds") as store:
        shown = [repr(store), str(store), repr(store.client)]
        with pytest.raises(StateLoadError) as caught:
            await store.load("s")
        error: BaseException | None = caught.value
        while error is not None:  # the whole chain of causes
            shown += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
    shown += [record.getMessage() for record in caplog.records]
    assert all("s3cr3t-pw" not in text for text in shown)
    unreachable = "redis://alice:s3cr3t-pw@127.0.0.1:1/0"
    async with RedisStateStore.from_url(unreachable, retry=None) as store:
        with pytest.raises(StateLoadError) as refused:
            await store.load("s")
    assert "s3cr3t-pw" not in str(refused.value)
