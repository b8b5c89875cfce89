"""The Redis backend's numbers on real servers: the meta hash stays listpack-encoded, an append
to a session without gaps runs no command more than before, one round trip per history call,
snapshot and replace, one WAIT per pop, edit and replace under ``durability="replicas"``, and
the history operations on a cluster (the gaps key in the session's slot)."""

from __future__ import annotations

import pytest
from redis.asyncio import ConnectionPool, Redis, RedisCluster

from chatstate import RedisStateStore
from chatstate.bench.redis_counting import CountingConnection
from chatstate.stores import Written
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

from .test_redis_ha import _wait_calls, primary_and_replica  # noqa: F401 (a fixture)
from .test_redis_numbering import _append, _edit, _entries, _replace, _wid

pytestmark = pytest.mark.redis


async def test_the_meta_hash_stays_compact(redis_server: RedisServer, key_prefix: str) -> None:
    async with RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as store:
        backend, client = store.backend, store.client
        await _append(backend, *_entries(100))
        for seq in range(1, 99, 2):  # 49 gaps: far too long for the hash
            await _edit(backend, seq)
        await backend.pop("s", 1, write_id=_wid(), fence=None)
        for _ in range(40):  # and 40 write ids
            await _append(backend, b"more")
        assert await client.object("encoding", backend.key("s", "meta")) == b"listpack"
        assert await client.hget(backend.key("s", "meta"), "h") == b"*"
        # A replace with numbers far apart: its gaps too.
        numbers = list(range(0, 200, 3))
        await _replace(backend, [b"r"] * len(numbers), numbers, session="r")
        for _ in range(40):
            await _append(backend, b"more", session="r")
        assert await client.object("encoding", backend.key("r", "meta")) == b"listpack"
        assert await client.hget(backend.key("r", "meta"), "h") == b"*"


async def test_an_append_without_gaps_does_no_more_than_before(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # What a session without gaps costs, counted in the server's commands (scripts' included):
    # the append script reads one more field of the meta hash, and does nothing else new (the
    # session's updated time is the client's, an argument: no TIME).
    async with RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as store:
        backend, client = store.backend, store.client
        await _append(backend, *_entries(3), keep=4)
        await client.config_resetstat()
        for index in range(20):
            await _append(backend, f"n{index}".encode(), keep=4)  # every one trims
        stats = await client.info("commandstats")
        names = {name.removeprefix("cmdstat_") for name in stats}
        assert names == {
            "evalsha",
            "hmget",
            "rpush",
            "hset",
            "ltrim",
            "persist",
            "config|resetstat",
        }
        assert stats["cmdstat_hmget"]["calls"] == 20


# -- one round trip a call, durability, the cluster ----------------------------------------------


async def test_one_round_trip_per_history_call(redis_server: RedisServer, key_prefix: str) -> None:
    pool = ConnectionPool(port=redis_server.port, connection_class=CountingConnection)
    client = Redis(connection_pool=pool)
    async with RedisStateStore(client, prefix=key_prefix) as store:
        backend = store.backend
        await _append(backend, *_entries(10))  # connects
        for seq in (1, 3):  # and every script known to the server
            await _edit(backend, seq)
        await backend.read_range("s", before=5, after=None, limit=2, touch=None)
        await backend.pop("s", 1, write_id=_wid(), fence=None)
        await backend.read("s", limit=3, summary=False, touch=5, numbers=True)
        await _replace(backend, [b"x"], [3], session="r")
        await backend.snapshot("r")
        CountingConnection.sent = 0
        for index in range(10):
            await backend.read_range("s", before=None, after=index, limit=2, touch=60)
            await _edit(backend, 9 + index, truncate=True)  # the newest... or missing
            await _edit(backend, 0, b"x", version=1)  # stale
            await backend.pop("s", 1, write_id=_wid(), fence=None)
            await _append(backend, b"a", b"b", keep=8)
            await backend.read("s", limit=3, summary=False, touch=None, numbers=True)
            await _replace(backend, _entries(3), [index, index + 5, 99], session="r")
            assert (await backend.snapshot("r")) is not None
        assert CountingConnection.sent == 80
    await client.aclose()
    await pool.aclose()


@pytest.mark.redis
async def test_durable_pops_and_edits_wait_for_a_replica(
    primary_and_replica: tuple[RedisServer, RedisServer],  # noqa: F811
) -> None:
    primary, replica = primary_and_replica
    async with RedisStateStore.from_url(primary.url, prefix="plain") as plain:
        await _append(plain.backend, *_entries(3))
        await _edit(plain.backend, 1)  # every script known to the server (no EVAL fallback)
        await plain.backend.pop("s", 1, write_id=_wid(), fence=None)
        await _replace(plain.backend, [b"x"], [3], session="r")
    async with RedisStateStore.from_url(primary.url, durability="replicas") as store:
        backend = store.backend
        await _append(backend, *_entries(5))
        waits = _wait_calls(primary)
        assert isinstance(await _edit(backend, 2), Written)
        assert isinstance(await _edit(backend, 3, b"E3", truncate=True), Written)
        assert (await backend.pop("s", 1, write_id=_wid(), fence=None)).entries == [b"E3"]
        assert isinstance(await _replace(backend, [b"a", b"b"], [2, 7], session="r"), Written)
        assert _wait_calls(primary) == waits + 4  # one WAIT a write
        async with Redis.from_url(replica.url) as on_replica:
            assert await on_replica.lrange(backend.key("s"), 0, -1) == [b"e0", b"e1"]
            assert await on_replica.hget(backend.key("s", "meta"), "h") == b"2:3"
            assert await on_replica.hget(backend.key("r", "meta"), "h") == b"3:4"


async def test_history_operations_on_a_cluster(
    redis_cluster: LocalRedisCluster, key_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    await client.initialize()
    async with RedisStateStore(client, prefix=key_prefix) as store:
        backend = store.backend
        for session in ("a", "b{c}", "d}"):
            await _append(backend, *_entries(80), session=session)
            for seq in range(1, 79, 2):  # long gaps: the gaps key, in the session's slot
                assert isinstance(await _edit(backend, seq, session=session), Written)
            await backend.pop(session, 1, write_id=_wid(), fence=None)
            page = await backend.read_range(session, before=40, after=None, limit=2, touch=5)
            assert page.seqs() == [36, 38]
            assert await client.get(backend.key(session, "gaps"))
            raw = await backend.snapshot(session)  # copied with its numbers: gaps key and all
            assert raw is not None and raw.numbers is not None
            await _replace(backend, raw.entries, raw.numbers, session=session + "-copy")
            copy = await backend.snapshot(session + "-copy")
            assert copy is not None and (copy.entries, copy.numbers) == (raw.entries, raw.numbers)
            assert await client.get(backend.key(session + "-copy", "gaps"))
    await client.aclose()
