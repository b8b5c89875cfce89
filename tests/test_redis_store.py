"""What the Redis store does beyond the conformance suite (on fakeredis; real servers elsewhere)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import fakeredis
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chatstate import (
    ConfigurationError,
    CorruptEntryError,
    Message,
    RedisStateStore,
    RetryPolicy,
    StateLoadError,
    StateSaveError,
    UnsupportedFormatError,
    WrongTypeError,
)
from chatstate.stores._codec import encode_entry
from chatstate.testing.conformance import TRICKY_SESSION_IDS

from .redis_wire import WRITE_IDS_FIELDS


def _msgs(*texts: str) -> list[Message]:
    return [Message(role="user", content=text) for text in texts]


@pytest.fixture
async def client() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def store(client: fakeredis.FakeAsyncRedis) -> RedisStateStore:
    return RedisStateStore(client)


def test_keys_put_the_escaped_session_id_in_a_hash_tag(store: RedisStateStore) -> None:
    assert store.key("user-1") == "chatstate:{user-1}:messages"
    assert store.key("a}b{c%") == "chatstate:{a%7Db%7Bc%25}:messages"
    assert RedisStateStore(store.client, prefix="app:v2").key("x") == "app:v2:{x}:messages"


def test_no_two_session_ids_share_a_key_or_escape_their_hash_tag(store: RedisStateStore) -> None:
    ids = [*TRICKY_SESSION_IDS, "%7B", "%", "%25", "{}", "}{", "a%7Db", "a}b"]
    keys = [store.key(session_id) for session_id in ids]
    assert len(set(keys)) == len(ids)
    for key in keys:
        tag = key[key.index("{") + 1 : key.index("}")]
        assert key == f"chatstate:{{{tag}}}:messages"  # the tag is the whole id, always


async def test_append_trims_and_sets_the_ttl_on_the_server(
    store: RedisStateStore, client: fakeredis.FakeAsyncRedis
) -> None:
    await store.append("s", _msgs(*"abcdef"), max_messages=4, ttl=timedelta(minutes=5))
    key = store.key("s")
    assert await client.llen(key) == 4
    assert 299_000 < await client.pttl(key) <= 300_000
    assert await store.ttl("s") is not None and await store.exists("s")
    await store.append("s", _msgs("g"))  # no ttl: the session no longer expires
    assert await client.pttl(key) == -1 and await store.ttl("s") is None
    assert await store.ttl("unknown") is None and not await store.exists("unknown")


async def test_sliding_ttl_refreshes_expiry_on_load(client: fakeredis.FakeAsyncRedis) -> None:
    store = RedisStateStore(client, sliding_ttl=timedelta(hours=1))
    await store.append("s", _msgs("a"), ttl=10)
    assert await store.load("s") == _msgs("a")
    assert await client.pttl(store.key("s")) > 3_500_000
    assert await store.load("unknown") == []
    assert await client.exists(store.key("unknown")) == 0


@pytest.mark.parametrize("operation", ["load", "append", "save", "append nothing"])
async def test_a_key_of_another_type_raises_and_is_left_alone(
    store: RedisStateStore, client: fakeredis.FakeAsyncRedis, operation: str
) -> None:
    key = store.key("s")
    await client.hset(key, "field", "value")
    with pytest.raises(WrongTypeError, match="'s'") as caught:
        if operation == "load":
            await store.load("s")
        elif operation == "append":
            await store.append("s", _msgs("x"), max_messages=1, ttl=5)
        elif operation == "save":
            await store.save("s", _msgs("x"), ttl=5)
        else:
            await store.append("s", [])
    assert caught.value.session_id == "s"
    assert await client.hgetall(key) == {b"field": b"value"}
    assert await client.pttl(key) == -1


async def test_corrupt_entries_are_skipped_and_counted_or_raised(
    store: RedisStateStore, client: fakeredis.FakeAsyncRedis
) -> None:
    key = store.key("s")
    good = [encode_entry(message) for message in _msgs("a", "b", "c")]
    await client.rpush(key, good[0], b"garbage", good[1], b"\x07\x00{}", good[2])
    assert await store.load("s") == _msgs("a", "b", "c")
    assert store.corrupt_entries == 2
    strict = RedisStateStore(client, on_corrupt="raise")
    with pytest.raises(CorruptEntryError) as caught:
        await strict.load("s")
    assert caught.value.session_id == "s"
    await client.delete(key)
    await client.rpush(key, b"\x07\x00{}")
    with pytest.raises(UnsupportedFormatError, match="version 7"):
        await strict.load("s")


async def test_large_entries_can_be_stored_compressed(client: fakeredis.FakeAsyncRedis) -> None:
    store = RedisStateStore(client, compress_over=512, compression="zlib")
    text = " ".join(f"word{index}" for index in range(400))
    await store.append("s", [*_msgs(text), *_msgs("short")])
    raw = await client.lrange(store.key("s"), 0, -1)
    assert raw[0][1] >> 4 == 1 and len(raw[0]) < len(text) / 2  # zlib
    assert raw[1][1] == 0  # too small to compress
    assert await RedisStateStore(client).load("s") == _msgs(text, "short")  # any reader reads both


async def test_a_huge_append_is_pushed_in_chunks(store: RedisStateStore) -> None:
    many = _msgs(*(str(index) for index in range(10_000)))
    assert await store.append("s", many, max_messages=-1) == 10_000
    assert await store.load("s", limit=2) == many[-2:]
    await store.save("t", many)
    assert len(await store.load("t")) == 10_000


async def test_connection_failures_become_typed_errors_that_keep_the_messages() -> None:
    # Nothing listens on port 1; no retries by the client (they are its policy), and the store's
    # own tries without a wait between them, so the test is quick.
    client = Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    store = RedisStateStore(client, retry=RetryPolicy(attempts=3, backoff=0))
    with pytest.raises(StateLoadError, match="'s'"):
        await store.load("s")
    with pytest.raises(StateSaveError) as caught:
        await store.append("s", _msgs("keep me"))
    assert caught.value.messages == tuple(_msgs("keep me"))
    with pytest.raises(StateSaveError):
        await store.save("s", _msgs("keep me"))
    await client.aclose()


async def test_the_client_must_return_bytes() -> None:
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStateStore(client)
    await client.aclose()


@pytest.mark.parametrize(
    "options",
    [
        {"prefix": ""},
        {"prefix": "a{b}"},
        {"on_corrupt": "ignore"},
        {"compress_over": -1},
        {"sliding_ttl": -5},
        {"sliding_ttl": timedelta(0)},
        {"auto_pipeline": "yes"},
        {"max_batch": 0},
        {"max_in_flight": 1.5},
        {"max_pending": True},
        {"message_cache_bytes": -1},
    ],
    ids=repr,
)
def test_bad_options_are_rejected(
    client: fakeredis.FakeAsyncRedis, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        RedisStateStore(client, **options)  # type: ignore[arg-type]


def test_only_redis_clients_are_accepted() -> None:
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio\.Redis"):
        RedisStateStore(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["http://localhost", "localhost:6379", "redis://:secret@host:notaport/0"]
)
def test_bad_urls_are_rejected_without_showing_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisStateStore.from_url(url)
    assert "secret" not in str(caught.value)


async def test_from_url_owns_its_client_and_a_given_client_stays_open(
    client: fakeredis.FakeAsyncRedis,
) -> None:
    owned = RedisStateStore.from_url("rediss://alice:s3cret@127.0.0.1:6390/2", socket_timeout=1)
    kwargs = owned.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("alice", "s3cret", 2)
    assert "s3cret" not in repr(owned)
    await owned.aclose()
    await owned.aclose()
    given = RedisStateStore(client)
    await given.aclose()
    assert await client.ping()  # still usable: the caller owns it


async def test_from_url_gives_store_options_to_the_store_and_the_rest_to_a_waiting_pool() -> None:
    store = RedisStateStore.from_url(
        "redis://127.0.0.1:6390/0", prefix="app", auto_pipeline=False, socket_timeout=2
    )
    pool = store.client.connection_pool  # type: ignore[union-attr]
    assert isinstance(pool, BlockingConnectionPool)  # waits for a connection, never raises
    assert pool.max_connections == 50
    assert pool.connection_kwargs["socket_timeout"] == 2
    assert store.prefix == "app" and not store.auto_pipeline
    await store.aclose()
    with pytest.raises(ConfigurationError, match="no_such_option"):
        RedisStateStore.from_url("redis://127.0.0.1:6390/0", no_such_option=1)


def test_hiredis_parses_replies() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE  # the `redis` extra pulls redis[hiredis]


_PROSE = " ".join(str(kind.__doc__) for kind in (str, dict, list, int, float, bytes, set))


async def test_large_entries_are_compressed_by_default_and_every_kind_loads(
    client: fakeredis.FakeAsyncRedis,
) -> None:
    big = Message(role="user", content=_PROSE[:2048])
    small = Message(role="user", content="short")
    zlib = RedisStateStore(client, compression="zlib")
    default = RedisStateStore(client)  # "auto": zstd, which the redis extra installs
    plain = RedisStateStore(client, compress_over=None)
    await zlib.append("s", [big, small])
    await default.append("s", [big])
    await plain.append("s", [big])
    raw = await client.lrange(default.key("s"), 0, -1)
    assert [entry[1] >> 4 for entry in raw] == [1, 0, 2, 0]  # zlib, plain (small), zstd, plain
    assert len(raw[0]) < 0.6 * len(raw[3]) and len(raw[2]) < 0.6 * len(raw[3])
    for store in (zlib, default, plain):  # mixed entries load together, whatever a store writes
        assert await RedisStateStore(client, message_cache_bytes=0).load("s") == [
            big,
            small,
            big,
            big,
        ]
        assert await store.load("s", limit=2) == [big, big]
    with pytest.raises(ConfigurationError, match="'auto', 'zlib' or 'zstd'"):
        RedisStateStore(client, compression="gzip")  # type: ignore[arg-type]


def test_under_trio_every_call_says_the_store_runs_on_asyncio() -> None:
    trio = pytest.importorskip("trio")
    store = RedisStateStore(Redis(port=1))  # never reached: the calls stop before any I/O

    async def main() -> None:
        calls = [
            store.load("s"),
            store.load_with_summary("s"),
            store.append("s", _msgs("hello")),
            store.save("s", _msgs("hello")),
            store.delete("s"),
            store.metrics(),
        ]
        for call in calls:
            with pytest.raises(ConfigurationError, match="asyncio"):
                await call
        with pytest.raises(ConfigurationError, match="asyncio"):
            async with store.lease("s", ttl=5, timeout=1):
                pass
        with pytest.raises(ConfigurationError, match="asyncio"):
            [session async for session in store.session_ids()]

    trio.run(main)


async def test_versions_live_and_go_with_their_session(
    store: RedisStateStore, client: fakeredis.FakeAsyncRedis
) -> None:
    await store.append("s", _msgs("one", "re: one"), ttl=60)
    version = await store.version("s")
    assert version > 0 and await store.append_versioned("s", _msgs("two", "re")) == (4, version + 1)
    assert await client.pttl(store.key("s", "meta")) == -1  # no ttl on the last write: kept
    await store.append("s", _msgs("three"), ttl=60)
    assert 0 < await client.pttl(store.key("s", "meta")) <= 60_000  # expires with the list
    await store.delete("s")
    assert await client.exists(store.key("s")) == 0
    # Of the numbers, only the write ids are left, for a while, so a retried write is known.
    assert set(await client.hkeys(store.key("s", "meta"))) <= WRITE_IDS_FIELDS
    assert 0 < await client.pttl(store.key("s", "meta")) <= 600_000
    assert await store.version("s") == 0


async def test_a_client_slow_to_close_leaves_the_store_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py raises TimeoutError when a connection takes longer than socket_connect_timeout
    to close (seen on a loaded machine after a failover): the store's aclose logs it and ends."""
    import fakeredis
    from redis.exceptions import TimeoutError as RedisTimeout

    class SlowToClose(fakeredis.FakeAsyncRedis):  # type: ignore[misc]
        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            await super().aclose()
            raise RedisTimeout("Timed out closing connection after 0.3")

    store = RedisStateStore(SlowToClose(), owns_client=True)
    await store.append("s", [Message(role="user", content="hi")])
    with caplog.at_level("WARNING", logger="chatstate"):
        await store.aclose()
    assert "closing the Redis client's connections failed" in caplog.text
