"""Auto-pipelining in the Redis store, against real redis-server processes: many callers share
pipelined writes, and every caller still gets exactly its own reply or its own error."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence

import fakeredis
import pytest
from redis.asyncio import ConnectionPool, Redis, RedisCluster

from chatstate import (
    Message,
    OutcomeUnknownError,
    RedisStateStore,
    RetryPolicy,
    StateLoadError,
    WrongTypeError,
)
from chatstate.stores.redis import AutoPipeline
from chatstate.stores.redis._scripts import LEASE_ACQUIRE
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

from .redis_wire import WireConnection, Write, wired_client


def _turn(session: str, index: int) -> list[Message]:
    return [
        Message(role="user", content=f"{session} question {index}"),
        Message(role="assistant", content=f"{session} answer {index}"),
    ]


@pytest.fixture
async def wired(redis_server: RedisServer) -> AsyncIterator[tuple[Redis, type[WireConnection]]]:
    client, connection = wired_client(redis_server.url)
    yield client, connection
    await client.aclose()
    await client.connection_pool.aclose()


@pytest.fixture
def client(wired: tuple[Redis, type[WireConnection]]) -> Redis:
    return wired[0]


@pytest.fixture
def connection(wired: tuple[Redis, type[WireConnection]]) -> type[WireConnection]:
    """The client's connection class: what the store writes to the server."""
    return wired[1]


@pytest.fixture
async def store(client: Redis, key_prefix: str) -> AsyncIterator[RedisStateStore]:
    async with RedisStateStore(client, prefix=key_prefix) as store:
        yield store


def _shared(writes: Sequence[Write]) -> list[Write]:
    """The writes that carried the commands of more than one call."""
    return [write for write in writes if len(write.commands) > 1]


async def _mixed_workload(store: RedisStateStore, sessions: int, turns: int) -> None:
    """Each session appends turns and loads after each; every load must see exactly its own
    session's messages, in order, bounded."""

    async def session(name: str) -> None:
        for index in range(turns):
            length = await store.append(name, _turn(name, index), max_messages=6, ttl=60)
            assert length == min(6, 2 * (index + 1))
            history = await store.load(name, limit=20)
            expected = [m for i in range(index + 1) for m in _turn(name, i)][-6:]
            assert history == expected
            await asyncio.sleep(random.random() / 1000)  # vary the interleaving

    await asyncio.gather(*(session(f"s{index}") for index in range(sessions)))


async def test_concurrent_sessions_share_writes_and_each_gets_its_own_reply(
    store: RedisStateStore, connection: type[WireConnection]
) -> None:
    await _mixed_workload(store, sessions=300, turns=4)
    commands = sum(len(write.commands) for write in connection.writes)
    assert commands >= 300 * 4 * 2  # every load and append (and the scripts' first EVALs)
    assert len(connection.writes) < commands / 3  # many commands per write


async def test_one_session_at_a_time_never_waits_for_a_batch(
    store: RedisStateStore, connection: type[WireConnection]
) -> None:
    for index in range(20):
        await store.append("alone", _turn("alone", index), max_messages=10)
        assert len(await store.load("alone")) == min(10, 2 * (index + 1))
    # The fast path: each command went out at once, on its own, from the caller's own task
    # (not from a batch task, one loop iteration later).
    assert len(connection.writes) >= 40
    assert _shared(connection.writes) == []
    assert {write.task for write in connection.writes} == {asyncio.current_task()}


async def test_an_error_reply_fails_only_its_own_caller(
    store: RedisStateStore, client: Redis, connection: type[WireConnection]
) -> None:
    for index in range(0, 100, 10):
        await client.set(store.key(f"s{index}"), "not a list")  # wrong-type keys in the batch

    async def load(index: int) -> list[Message] | Exception:
        try:
            return await store.load(f"s{index}")
        except WrongTypeError as exc:
            return exc

    async def append(index: int) -> int | Exception:
        try:
            return await store.append(f"s{index}", _turn(f"s{index}", 0))
        except WrongTypeError as exc:
            return exc

    before = len(connection.writes)
    appended = await asyncio.gather(*(append(index) for index in range(100)))
    loaded = await asyncio.gather(*(load(index) for index in range(100)))
    assert _shared(connection.writes[before:])  # the failing commands shared writes with others
    for index in range(100):
        if index % 10 == 0:
            for error in (appended[index], loaded[index]):
                # Exactly WrongTypeError, naming its own session (not a StateSaveError: the failed
                # append's error does not carry its messages).
                assert type(error) is WrongTypeError and error.session_id == f"s{index}"
            assert await client.get(store.key(f"s{index}")) == b"not a list"  # untouched
        else:
            assert appended[index] == 2
            assert loaded[index] == _turn(f"s{index}", 0)


async def test_cancelled_callers_leave_whole_turns_and_a_connection_in_step(
    store: RedisStateStore,
) -> None:
    # Cancel at every stage: before the batch is sent, while it is in flight, after the reply.
    for delay in (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.005):
        tasks = [
            asyncio.create_task(store.append(f"c{index}", _turn(f"c{index}", 0), max_messages=50))
            for index in range(200)
        ]
        await asyncio.sleep(delay)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for index, result in enumerate(results):
            if index % 2:
                assert not isinstance(result, BaseException), result
    for index in range(200):
        history = await store.load(f"c{index}")
        assert len(history) % 2 == 0  # whole turns only
        assert all(message.text.startswith(f"c{index} ") for message in history)
        if index % 2:
            assert len(history) == 12  # every turn of a caller that was not cancelled


@pytest.mark.parametrize("retry", [True, False], ids=["retried", "not-retried"])
async def test_a_connection_lost_under_a_batch_applies_each_append_once(
    client: Redis, key_prefix: str, connection: type[WireConnection], retry: bool
) -> None:
    policy = RetryPolicy(attempts=3, backoff=0.01) if retry else RetryPolicy(attempts=1)
    store = RedisStateStore(client, prefix=key_prefix, retry=policy)
    await store.append("warm-up", _turn("warm-up", 0))  # the script known to the server
    waiting = [f"f{index}" for index in range(50)]
    lost: list[Write] = []

    def lose_the_first_shared_reply(write: Write) -> None:
        # The first write of many appends runs on the server, and its replies are lost.
        if len(write.commands) > 1 and not lost:
            lost.append(write)
            connection.lose_replies = 1

    connection.fault = lose_the_first_shared_reply
    results = await asyncio.gather(
        *(store.append(name, _turn(name, 0)) for name in waiting), return_exceptions=True
    )
    connection.fault = None
    failed = [result for result in results if isinstance(result, BaseException)]
    if retry:
        assert failed == []  # retried: each recognised by its write id
    else:
        assert lost and len(failed) == len(lost[0].commands)
        for error in failed:
            assert isinstance(error, OutcomeUnknownError), error
            assert list(error.messages) == _turn(error.session_id or "", 0)  # what to retry
            # The documented retry: it was applied, so it is not applied again.
            assert await store.append(error.session_id or "", error.messages,
                                      write_id=error.write_id) == 2  # fmt: skip
    for name in waiting:
        assert await store.load(name) == _turn(name, 0)  # once each
    await store.aclose()


async def test_a_slow_server_holds_callers_back_instead_of_queueing_without_bound(
    redis_server: RedisServer, key_prefix: str
) -> None:
    client, connection = wired_client(redis_server.url)
    pipeline = AutoPipeline(client, max_batch=16, max_in_flight=1, max_pending=32)
    queued: list[int] = []

    def observe(write: Write) -> None:
        queued.append(pipeline.pending)  # commands waiting while this write goes out
        return None

    connection.fault = observe
    connection.stall = 0.002  # a slow server: the next writes wait for this one
    keys = [f"{key_prefix}:{n}" for n in range(8)]
    replies = await asyncio.gather(*(pipeline.execute("INCR", keys[n % 8]) for n in range(400)))
    assert sorted(replies)[-9:] == [49] + [50] * 8  # each applied once
    sizes = [len(write.commands) for write in connection.writes]
    assert sum(sizes) == 400 and max(sizes) <= 16
    assert 16 < max(queued) <= 32  # the queue filled up, and never went over its bound
    await pipeline.aclose()
    await client.delete(*keys)
    await client.aclose()
    await client.connection_pool.aclose()


async def test_a_thousand_sessions_fit_in_a_small_pool(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # redis-py's default pool raises "Too many connections" past its size instead of waiting.
    for auto_pipeline in (True, False):
        pool = ConnectionPool.from_url(redis_server.url, max_connections=4)
        store = RedisStateStore(
            Redis(connection_pool=pool), prefix=key_prefix, auto_pipeline=auto_pipeline
        )
        results = await asyncio.gather(
            *(store.load(f"k{index}") for index in range(1000)), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        if auto_pipeline:
            assert errors == []
        else:  # the control: without it, the same load exhausts the pool
            assert errors and all(isinstance(error, StateLoadError) for error in errors)
        await store.aclose()
        await store.client.aclose()
        await pool.aclose()


async def test_callers_cancelled_on_the_fast_path_leave_no_connection_checked_out(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # One call at a time takes the fast path (sent from the caller's own task). Cancel such calls
    # at every step, from taking a connection through the staleness check and the connect to
    # the reply in flight, many more times than the pool has connections: none may keep a
    # connection out of the pool. redis-py's plain pool raises when exhausted, so a leak shows
    # as a failed call, not as a hang.
    pool = ConnectionPool.from_url(redis_server.url, max_connections=8)
    client = Redis(connection_pool=pool)
    store = RedisStateStore(client, prefix=key_prefix)
    await store.load("warm-up")  # the one connection the store keeps while it lives
    cancelled = 0
    for _ in range(16):
        for steps in range(12):
            call = asyncio.create_task(store.load(f"k{steps}"))
            for _ in range(steps):
                await asyncio.sleep(0)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            cancelled += call.cancelled()
    assert cancelled > 8  # more callers cancelled before their reply than the pool holds
    # redis-py has no public count of the connections in use (before 8): its own set.
    assert len(pool._in_use_connections) == 1
    async with asyncio.timeout(5):
        assert await store.load("after") == []
    await store.aclose()
    assert pool._in_use_connections == set()  # every connection back in the pool
    await client.aclose()
    await pool.aclose()


async def test_turning_it_off_sends_every_command_on_its_own(
    client: Redis, connection: type[WireConnection], key_prefix: str
) -> None:
    async with RedisStateStore(client, prefix=key_prefix, auto_pipeline=False) as store:
        await _mixed_workload(store, sessions=50, turns=2)
        assert len(connection.writes) >= 50 * 2 * 2
        assert _shared(connection.writes) == []


async def test_leases_go_through_the_pipeline_too(
    store: RedisStateStore, connection: type[WireConnection]
) -> None:
    order: list[str] = []

    async def turn(name: str) -> None:
        async with store.lease(name, ttl=5, timeout=5):
            order.append(name)
            await store.append(name, _turn(name, 0))

    await asyncio.gather(*(turn(f"l{index % 20}") for index in range(200)))
    assert len(order) == 200
    takes = [
        write
        for write in _shared(connection.writes)
        if any(LEASE_ACQUIRE.sha.encode() in command for command in write.commands)
    ]
    assert takes  # leases taken in writes shared with other calls


def test_a_store_can_be_used_from_one_event_loop_after_another() -> None:
    # redis-py's own connections cannot cross event loops; fakeredis's can, so this shows that
    # the pipeline's futures, tasks and held connections start afresh on the new loop.
    store = RedisStateStore(fakeredis.FakeAsyncRedis())

    async def use(index: int) -> None:
        await asyncio.gather(*(store.append(f"e{n}", _turn(f"e{n}", index)) for n in range(50)))
        assert len(await store.load("e0")) == 2 * (index + 1)

    asyncio.run(use(0))
    asyncio.run(use(1))
    asyncio.run(store.aclose())


async def test_a_cluster_batches_per_node(
    redis_cluster: LocalRedisCluster, key_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    async with RedisStateStore(client, prefix=key_prefix) as store:
        await _mixed_workload(store, sessions=200, turns=3)
        # redis-py's cluster client makes its own connections: the pipeline's public count.
        assert store.backend.pipeline.batches_sent > 0
    await client.aclose()


async def test_closing_the_store_lets_queued_and_running_calls_finish(
    client: Redis, key_prefix: str
) -> None:
    store = RedisStateStore(client, prefix=key_prefix)
    calls = [asyncio.create_task(store.append(f"q{n}", _turn(f"q{n}", 0))) for n in range(100)]
    await asyncio.sleep(0)  # queued, not yet sent
    await store.aclose()
    assert [call.result() for call in calls] == [2] * 100


async def test_a_burst_is_split_evenly_over_the_writes_that_may_start(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # One write of everything would leave the client idle while the server runs it: a burst is
    # split over the free writes (here 3: the first caller's own write is in flight), each of at
    # least 8 commands. A queue longer than one batch (max_batch) fills full batches instead.
    client, connection = wired_client(redis_server.url)
    pipeline = AutoPipeline(client, max_in_flight=4, max_batch=128)
    await pipeline.execute("PING")  # connected: the burst's first caller does not wait for it
    bursts = ((100, [1, 33, 33, 33]), (17, [1, 8, 8]), (9, [1, 8]), (300, [1, 43, 128, 128]))
    for burst, expected in bursts:
        connection.writes.clear()
        keys = [f"{key_prefix}:{n}" for n in range(burst)]
        replies = await asyncio.gather(*(pipeline.execute("INCR", key) for key in keys))
        assert replies == [1] * burst
        assert sorted(len(write.commands) for write in connection.writes) == expected
        await client.delete(*keys)
    await pipeline.aclose()
    await client.aclose()
    await client.connection_pool.aclose()
