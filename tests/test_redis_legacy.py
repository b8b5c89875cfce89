"""Data written by chatstate 0.1.0's Redis store stays readable and writable.

The keys below are exactly what the 0.1.0 store wrote (``git show 7b555ba:src/chatstate/stores/
redis.py``, run on fakeredis): a session of a ``versioned=True`` store with plain, zlib and zstd
entries, a summary and a ``:version`` key, expiring in an hour; and a session of a plain store.
Neither has the ``:meta`` hash of today's layout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import fakeredis
import pytest
from redis.asyncio import Redis

from chatstate import Message, RedisStateStore
from chatstate.testing.redis_server import RedisServer

from .conftest import kinds

_TEXT = (
    "The history of a conversation is kept as one Redis list per session, oldest first; "
    "each entry is a small envelope around the message's JSON, compressed when it is long. "
) * 3

_ZLIB = (
    b"\x01\x10x\x9c\xed\x8e\xc1\r\xc20\x14CW\xb1r\xe1R1\x00l\xc0\x01$`\x81\x88\xb8MD\x9a\x1f"
    b"\xe5\xa7E\x08\xb1;\x9f\x1d8r}\xb6\x9e\xfdrM2\xdd\xce-\xca\xe6\x06w\x93\xd2Y\xba\x81k$b\xd2"
    b".\xed\t\x19\xe1a\xd1\xca\xa6\xbe')H\x8a;k\x87WH!\xce\x0cF\xb2\xd5Q\xd9\xa0T\xb5\xd6\x00\xc9"
    b"\x81\xc6\xc6\xd4\xb4\xefA\x7f\x8b0\xbb\x19\xad\xed\xa1\xb3\xcf\xd9\xc0\xca,\x95\xf0M\x96\x12"
    b"\xd0mx6\x81\x9f\xb8Q\x1c.\xa7\xe3`\xdbsm\xc6\x18\xf0\x88\xb4\xf9\xfe5d)\xd3\x16\xff\xa3\xbf>"
    b"\xea\xde\x1f\xfaZ\xbf\x07"
)
_ZSTD = (
    b"\x01 (\xb5/\xfd`\x1c\x01\x1d\x05\x00\xe2K$ P\x89\x9b\x03\x10\xd5\xf4\xab#P\xd1\x87!&\x17X"
    b"\x11\xdb\x192F\xee\x19\x08uv\x0c1ffB\x08\x0b\xa7\x00\x8aC\x96\xabgU\xd0\xe4\xdfMI\x10\xb9@o"
    b"\xb0\x02\xfdNj\x95MG\x80\r\xd5\n2/\xcee\x0c%/b\xb4<W!\xc8\r\xc8\xb7\x95h\xde\x89a\x0f\x87"
    b"\xeb\xf7\xdb\xac4\xbfX\xbf\x92[}\xd8\xa3\xa6\xe2\x81~\xf5p%z\xf3\xe2\x10)j\x02\xcbh\x98_\xaa"
    b"Vy\x10\xa7Y\x1c\xcd\xf208\x87\xd3,\x8d\x869`\x98\xc6A\x1c\x07\xc2#\xe1(\x04\x04\x00O,\xd3\xa2"
    b"\x88\rXb5?\xac!\n"
)
_VERSION = 29269793238801

_OLD_SUMMARY = Message(role="system", content="The user is called Alice.")
_OLD_HISTORY = [
    Message(role="user", content=_TEXT),
    Message(role="assistant", content=_TEXT.upper()),
    Message(role="user", content="What's my name?"),
]


async def _write_as_0_1_0(client: Redis, prefix: str) -> None:
    tag = f"{prefix}:{{with summary}}"
    await client.rpush(
        f"{tag}:messages", _ZLIB, _ZSTD, b'\x01\x00{"role":"user","content":"What\'s my name?"}'
    )
    await client.set(
        f"{tag}:summary",
        b'\x01\x00{"role":"system","content":"The user is called Alice."}',
    )
    await client.set(f"{tag}:version", _VERSION)
    for kind in ("messages", "summary", "version"):
        await client.pexpire(f"{tag}:{kind}", 3_600_000)
    await client.rpush(
        f"{prefix}:{{plain}}:messages",
        b'\x01\x00{"role":"user","content":"one"}',
        b'\x01\x00{"role":"assistant","content":"two"}',
    )


@pytest.fixture(params=kinds("fakeredis", "redis"))
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    if request.param == "fakeredis":
        client: Redis = fakeredis.FakeAsyncRedis()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(client: Redis, key_prefix: str) -> AsyncIterator[RedisStateStore]:
    await _write_as_0_1_0(client, key_prefix)
    async with RedisStateStore(client, prefix=key_prefix) as store:
        yield store


def _texts(messages: Sequence[Message]) -> list[str]:
    return [message.text for message in messages]


async def test_a_0_1_0_session_reads_whole_with_its_summary_version_and_expiry(
    store: RedisStateStore,
) -> None:
    assert await store.load("with summary") == _OLD_HISTORY
    assert await store.load("with summary", limit=1) == _OLD_HISTORY[-1:]
    assert await store.load_with_summary("with summary") == (_OLD_HISTORY, _OLD_SUMMARY)
    assert await store.load_versioned("with summary") == (_OLD_HISTORY, _VERSION)
    assert await store.version("plain") == 1  # it had no version key
    snapshot = await store.snapshot("with summary")
    assert snapshot is not None and snapshot.messages == _OLD_HISTORY
    assert snapshot.summary == _OLD_SUMMARY
    assert snapshot.ttl is not None and 3_500 < snapshot.ttl <= 3_600
    assert await store.exists("plain") and await store.ttl("plain") is None


async def test_a_0_1_0_session_takes_appends_numbered_after_its_entries(
    store: RedisStateStore, client: Redis
) -> None:
    turn = [Message(role="user", content="Alice"), Message(role="assistant", content="Yes")]
    assert await store.append_versioned("with summary", turn, max_messages=4, ttl=60) == (
        4,
        _VERSION + 1,  # the old version goes on: a near cache sees one write
    )
    assert await store.load_with_summary("with summary") == (
        [*_OLD_HISTORY[1:], *turn],
        _OLD_SUMMARY,  # kept, expiring with the list
    )
    assert await client.exists(store.key("with summary", "version")) == 0  # moved into meta
    for kind in ("messages", "summary", "meta"):  # all three expire together
        assert 59_000 < await client.pttl(store.key("with summary", kind)) <= 60_000
    assert await store.append("plain", turn) == 4
    assert _texts(await store.load("plain")) == ["one", "two", "Alice", "Yes"]


async def test_a_0_1_0_session_folds_by_number_even_when_a_turn_comes_between(
    store: RedisStateStore,
) -> None:
    turn = [Message(role="user", content="three"), Message(role="assistant", content="four")]

    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        assert _texts(history) == ["one", "two"] and summary is None
        # A turn of another instance lands while the fold runs: the first write with today's
        # layout, which must number the old entries as the read did.
        assert await store.append("plain", turn, max_messages=3) == 3
        return 1, Message(role="system", content="said one")

    assert await store.compact("plain", fold)
    assert await store.load_with_summary("plain") == (
        [Message(role="assistant", content="two"), *turn],
        Message(role="system", content="said one"),
    )


async def test_a_0_1_0_session_is_saved_over_and_deleted_whole(
    store: RedisStateStore, client: Redis
) -> None:
    await store.save("with summary", [Message(role="user", content="anew")], ttl=60)
    assert await store.load_with_summary("with summary") == (
        [Message(role="user", content="anew")],
        None,  # a save drops the summary
    )
    assert await store.version("with summary") not in (0, _VERSION)
    assert await client.exists(store.key("with summary", "version")) == 0
    assert await store.delete("plain") and await store.delete("with summary")
    left = [key async for key in client.scan_iter(match=f"{store.prefix}:*")]
    # Only the write ids of the deletes, expiring: what a retried delete is recognised by.
    assert sorted(left) == sorted(
        store.key(session_id, "meta").encode() for session_id in ("plain", "with summary")
    )
    assert all([0 < await client.pttl(key) <= 600_000 for key in left])
