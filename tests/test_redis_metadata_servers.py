"""The Redis backend's metadata on real servers: the meta hash stays listpack-encoded beside 64 KiB
of metadata, one round trip per call, one WAIT per metadata write under
``durability="replicas"`` (the metadata on the replica), a lost reply of a metadata write or of
an append with metadata retried without a loss or a double, and the metadata, times, expiry and
cursor on a cluster (the metadata key in the session's slot)."""

from __future__ import annotations

import time

import anyio
import pytest
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from chatstate import RedisStateStore
from chatstate.bench.redis_counting import CountingConnection
from chatstate.stores import Written
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

from .redis_wire import wired_client
from .test_redis_ha import _wait_calls, primary_and_replica  # noqa: F401 (a fixture)
from .test_redis_metadata import _append, _described, _replace, _ttls, _wid, _write_meta

pytestmark = pytest.mark.redis


async def test_the_meta_hash_stays_compact_beside_large_metadata(
    redis_server: RedisServer, key_prefix: str
) -> None:
    async with RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as store:
        backend, client = store.backend, store.client
        await _append(backend, b"a", meta=b"m" * 65_536, ttl=60)
        for _ in range(40):
            await _append(backend, b"more", ttl=60)
        await _write_meta(backend, b"n" * 65_536)
        assert await client.object("encoding", backend.key("s", "meta")) == b"listpack"
        assert set(await client.hkeys(backend.key("s", "meta"))) >= {b"m", b"c", b"u"}
        assert await client.strlen(backend.key("s", "metadata")) == 65_536


async def test_one_round_trip_per_call_with_metadata(
    redis_server: RedisServer, key_prefix: str
) -> None:
    pool = ConnectionPool(port=redis_server.port, connection_class=CountingConnection)
    client = Redis(connection_pool=pool)
    async with RedisStateStore(client, prefix=key_prefix) as store:
        backend = store.backend
        await _append(backend, b"a", meta=b"doc")  # connects, and every script known
        await _write_meta(backend, b"doc")
        await _described(backend)
        await _replace(backend, b"r", meta=None)
        await backend.snapshot("s")
        await backend.list_conversations("u", now=time.time(), offset=0, limit=2, after=(1.0, "x"))
        CountingConnection.sent = 0
        for index in range(10):
            await _append(backend, b"b", meta=f"doc {index}".encode())
            await _write_meta(backend, None)
            assert (await _described(backend, touch=60)).meta is None
            await _replace(backend, b"r", meta=b"m")
            assert (await backend.snapshot("s")).meta == b"m"  # type: ignore[union-attr]
            await backend.list_conversations(
                "u", now=time.time(), offset=0, limit=2, after=(1.0, "x")
            )
        assert CountingConnection.sent == 60
    await client.aclose()
    await pool.aclose()


async def test_durable_metadata_writes_wait_for_a_replica(
    primary_and_replica: tuple[RedisServer, RedisServer],  # noqa: F811
) -> None:
    primary, replica = primary_and_replica
    async with RedisStateStore.from_url(primary.url, prefix="plain") as plain:
        await _append(plain.backend, b"a", meta=b"x")  # every script known to the server
        await _write_meta(plain.backend, b"x")
    async with RedisStateStore.from_url(primary.url, durability="replicas") as store:
        backend = store.backend
        waits = _wait_calls(primary)
        await _append(backend, b"a", meta=b"first", ttl=60)
        assert isinstance(await _write_meta(backend, b"second"), Written)
        assert _wait_calls(primary) == waits + 2  # one WAIT a write
        async with Redis.from_url(replica.url) as on_replica:
            assert await on_replica.get(backend.key("s", "metadata")) == b"second"
            assert 0 < await on_replica.pttl(backend.key("s", "metadata")) <= 60_000
            assert await on_replica.hget(backend.key("s", "meta"), "m") == b"1"


@pytest.mark.parametrize("write", ["write_meta", "append"])
async def test_a_metadata_write_whose_reply_was_lost_is_applied_once(
    redis_server: RedisServer, key_prefix: str, write: str
) -> None:
    # The reply lost after the script ran (the connection dropped): the caller does not know
    # whether it was applied. Another instance writes meanwhile; the caller's retry with the
    # same write id changes nothing, so neither is lost nor doubled nor undone.
    client, wire = wired_client(redis_server.url)
    async with (
        RedisStateStore(client, prefix=key_prefix, retry=None) as faulted,
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as other,
    ):
        await _append(faulted.backend, b"first", meta=b"before")  # every script known
        await _write_meta(faulted.backend, b"before")
        wid = _wid()

        async def run() -> object:
            if write == "write_meta":
                return await faulted.backend.write_meta("s", b"mine", write_id=wid, fence=None)
            return await faulted.backend.append(
                "s", [b"turn"], max_entries=None, ttl=60, write_id=wid, fence=None, meta=b"mine"
            )

        wire.lose_replies = 1
        with pytest.raises(RedisConnectionError):
            await run()
        page = await _described(other.backend)
        assert page.meta == b"mine"  # it ran
        await _append(other.backend, b"other", meta=b"theirs")
        retried = await run()
        assert isinstance(retried, Written) and not retried.applied
        page = await _described(other.backend)
        expected = [b"first", b"other"] if write == "write_meta" else [b"first", b"turn", b"other"]
        assert (page.entries, page.meta) == (expected, b"theirs")
    await client.aclose()


async def test_metadata_times_and_cursor_on_a_cluster(
    redis_cluster: LocalRedisCluster, key_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    await client.initialize()
    async with RedisStateStore(client, prefix=key_prefix) as store:
        backend = store.backend
        sessions = ("a", "b{c}", "d}", "s:\u00e9")
        for session in sessions:  # ids in as many slots
            await _append(backend, b"x", meta=session.encode(), ttl=0.5, session=session)
            await _write_meta(backend, b"w:" + session.encode(), session=session)
            await _replace(backend, b"r", session=session)  # ttl 60, metadata kept
            page = await _described(backend, session, touch=0.5)
            assert page.meta == b"w:" + session.encode() and page.created > 0
            raw = await backend.snapshot(session)
            assert raw is not None and raw.meta == page.meta
            list_ttl, _, meta_ttl = await _ttls(client, backend, session)
            assert 0 < meta_ttl <= list_ttl <= 500
            now = float(round(time.time()))
            await backend.index_conversation(session, "m1", now=now, ttl=60)
            await backend.index_conversation(session, "\x1fm2", now=now, ttl=60)
            listed = await backend.list_conversations(
                session, now=now, offset=0, limit=5, after=(now, "m1")
            )
            assert listed == [("\x1fm2", now)]
        await anyio.sleep(0.7)  # expired with their sessions, on every node
        for session in sessions:
            assert (await _described(backend, session)).meta is None
            assert not await client.exists(backend.key(session, "metadata"))
    await client.aclose()
