"""The Redis store against real redis-server processes: round trips, sharing, the cluster."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis, RedisCluster

from chatstate import (
    Message,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    ScriptedProvider,
    StateLoadError,
    StateMiddleware,
    StateMiddlewareConfig,
)
from chatstate.bench.redis_counting import CountingConnection
from chatstate.stores.redis._transport import ConnectionTransport
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer, find_free_port

pytestmark = pytest.mark.redis  # every test here talks to a real server (`tls_server` its own)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def _turn(index: int) -> list[Message]:
    return [
        Message(role="user", content=f"question {index}"),
        Message(role="assistant", content=f"answer {index}"),
    ]


@pytest.mark.parametrize("sliding", [False, True], ids=["plain", "sliding ttl"])
async def test_one_round_trip_per_load_and_per_append(
    redis_server: RedisServer, key_prefix: str, sliding: bool
) -> None:
    pool = ConnectionPool(port=redis_server.port, connection_class=CountingConnection)
    client = Redis(connection_pool=pool)
    store = RedisStateStore(
        client, prefix=key_prefix, sliding_ttl=timedelta(hours=1) if sliding else None
    )
    await store.append("warm-up", _turn(0), max_messages=20, ttl=60)  # connects, caches scripts
    await store.load("warm-up", limit=20)
    CountingConnection.sent = 0
    for index in range(50):
        await store.append(f"s{index % 5}", _turn(index), max_messages=20, ttl=60)
    assert CountingConnection.sent == 50
    for index in range(50):
        await store.load(f"s{index % 5}", limit=20)
    assert CountingConnection.sent == 100
    await client.aclose()
    await pool.aclose()


async def test_scripts_are_reloaded_after_a_script_flush(client: Redis, key_prefix: str) -> None:
    store = RedisStateStore(client, prefix=key_prefix)
    await store.append("s", _turn(1))
    await client.script_flush()  # as after a server restart
    assert await store.append("s", _turn(2), max_messages=3) == 3
    await store.save("t", _turn(3))
    assert await store.load("t") == _turn(3)


async def test_replies_stay_in_step_around_resp3_push_messages(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # RESP3 lets the server push messages between replies (here: client-side caching's
    # invalidation of a key the connection tracks and then sets itself); they go to redis-py's
    # parser, and the replies of a pipelined exchange stay in step.
    client = Redis.from_url(redis_server.url, protocol=3)
    transport = ConnectionTransport(client)
    tracked = f"{key_prefix}:tracked"
    replies = await transport.execute_many(
        [
            ("CLIENT", "TRACKING", "ON"),
            ("GET", tracked),  # tracked from now on
            ("SET", tracked, "1"),  # an invalidation is pushed to this connection
            ("GET", tracked),
            ("SET", tracked, "2"),
            ("LRANGE", f"{key_prefix}:missing", 0, -1),
        ]
    )
    assert replies == [b"OK", None, b"OK", b"1", b"OK", []]
    assert await transport.execute(("GET", tracked)) == b"2"
    await transport.release(transport.detach())
    await client.aclose()


def _pipeline(store: RedisStateStore, **config: Any) -> Pipeline:
    async def reply(messages: Sequence[Message]) -> str:
        await asyncio.sleep(0)
        return f"answer to {messages[-1].text}"

    return Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(**config)),
        ProviderMiddleware(ScriptedProvider(reply)),
    )


async def test_two_instances_share_one_conversation(
    redis_server: RedisServer, key_prefix: str
) -> None:
    async with (
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as first,
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as second,
    ):
        assert first.client.connection_pool is not second.client.connection_pool  # type: ignore[union-attr]
        one = Pipeline(StateMiddleware(first), ProviderMiddleware(ScriptedProvider()))
        two = Pipeline(StateMiddleware(second), ProviderMiddleware(ScriptedProvider()))
        await one.execute_with_session("user-1", "user", "My name is Alice")
        result = await two.execute_with_session("user-1", "user", "What's my name?")
        assert result.response.text == "Your name is Alice."
        assert len(await first.load("user-1")) == 4


@pytest.mark.parametrize("max_messages", [1000, 10])
async def test_concurrent_turns_on_one_session_from_two_instances(
    redis_server: RedisServer, key_prefix: str, max_messages: int
) -> None:
    async with (
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as first,
        RedisStateStore.from_url(redis_server.url, prefix=key_prefix) as second,
    ):
        pipes = [
            _pipeline(store, max_messages=max_messages, ttl=timedelta(minutes=10))
            for store in (first, second)
        ]
        await asyncio.gather(
            *(pipes[i % 2].execute_with_session("shared", "user", f"q{i}") for i in range(100))
        )
        history = await first.load("shared")
        assert len(history) == min(200, max_messages)  # none lost, the bound respected
        for question, answer in zip(history[::2], history[1::2], strict=True):
            assert question.role == "user"  # every turn whole: its reply right after it
            assert answer.text == f"answer to {question.text}"
        if max_messages >= 200:
            assert {m.text for m in history[::2]} == {f"q{i}" for i in range(100)}
        assert 0 < await first.client.pttl(first.key("shared")) <= 600_000  # type: ignore[misc]


async def test_a_many_session_workload_across_the_cluster(
    redis_cluster: LocalRedisCluster, key_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    await client.initialize()
    store = RedisStateStore(client, prefix=key_prefix)
    pipe = _pipeline(store, max_messages=6, ttl=timedelta(minutes=5))
    sessions = [f"user-{index}" for index in range(150)]
    for round_ in range(3):
        await asyncio.gather(
            *(pipe.execute_with_session(sid, "user", f"{sid}/{round_}") for sid in sessions)
        )
    for sid in sessions:
        history = await store.load(sid)
        assert [m.text for m in history[::2]] == [f"{sid}/{r}" for r in range(3)]
    slots = {client.keyslot(store.key(sid)) for sid in sessions}
    nodes = {client.get_node_from_key(store.key(sid)).name for sid in sessions}
    assert len(slots) > 100 and len(nodes) == 3  # the sessions really are spread out
    await client.aclose()


async def test_acl_credentials_in_the_url(redis_server: RedisServer, client: Redis) -> None:
    await client.acl_setuser(
        "chatstate-test", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"]
    )
    try:
        url = f"redis://chatstate-test:s3cret@127.0.0.1:{redis_server.port}/0"
        async with RedisStateStore.from_url(url, prefix="acl") as store:
            await store.append("s", _turn(1))
            assert await store.load("s") == _turn(1)
            await store.delete("s")
        bad = f"redis://chatstate-test:wrong@127.0.0.1:{redis_server.port}/0"
        async with RedisStateStore.from_url(bad, prefix="acl") as store:
            with pytest.raises(StateLoadError, match="Authentication") as caught:
                await store.load("s")
            assert "wrong" not in str(caught.value)
    finally:
        await client.acl_deluser("chatstate-test")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path]]:
    """A redis-server that also listens with TLS, with a self-signed certificate for 127.0.0.1."""
    certs = tmp_path_factory.mktemp("tls")
    cert, key = certs / "cert.pem", certs / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    tls_port = find_free_port()
    with RedisServer(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
    ) as server:
        yield server, tls_port, cert


async def test_tls_with_rediss_urls(tls_server: tuple[RedisServer, int, Path]) -> None:
    _, port, cert = tls_server
    url = f"rediss://127.0.0.1:{port}/0"
    async with RedisStateStore.from_url(url, ssl_ca_certs=str(cert)) as store:
        await store.append("s", _turn(1), ttl=60)
        assert await store.load("s") == _turn(1)
    async with RedisStateStore.from_url(url) as untrusting:  # the system CAs do not know it
        with pytest.raises(StateLoadError, match="certificate"):
            await untrusting.load("s")


async def test_a_cold_cluster_client_survives_a_burst_of_first_commands(
    redis_cluster: LocalRedisCluster, key_prefix: str
) -> None:
    async with RedisStateStore.from_url(
        redis_cluster.url, cluster=True, prefix=key_prefix
    ) as store:
        lengths = await asyncio.gather(
            *(store.append(f"burst-{index}", _turn(index)) for index in range(150))
        )
        assert lengths == [2] * 150
        assert await store.load("burst-7") == _turn(7)
