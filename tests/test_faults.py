"""The Redis store when things go wrong: a server killed and restarted, a server that stalls, calls
cancelled halfway, and the retries that must never apply a turn twice. Real redis-server processes,
started, killed, paused and restarted by the tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatstate import (
    ConfigurationError,
    Message,
    OutcomeUnknownError,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    RetryPolicy,
    ScriptedProvider,
    StateLoadError,
    StateMiddleware,
    StateMiddlewareConfig,
    StateSaveError,
    StoreError,
)
from chatstate.stores import SessionSnapshot
from chatstate.testing.redis_server import RedisServer

from .redis_wire import WireConnection, Write, wired_client

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


def _turn(session: str, index: int) -> list[Message]:
    return [
        Message(role="user", content=f"{session} question {index}"),
        Message(role="assistant", content=f"{session} answer {index}"),
    ]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own, to kill, pause and restart; every write is on disk (AOF with
    fsync on every write) before it is acknowledged. A test that uses it is marked redis."""
    with RedisServer("--appendonly", "yes", "--appendfsync", "always") as server:
        yield server


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever the event loop reports as unhandled (an exception in a background task)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)


async def _our_connections(server: RedisServer) -> int:
    """Connections to the server, besides the one asking."""
    async with Redis.from_url(server.url) as probe:
        return len(await probe.client_list()) - 1


# Retry policy ---------------------------------------------------------------------------------


def test_a_retry_policy_backs_off_with_full_jitter() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.1, max_backoff=0.3)
    for failures, bound in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)]:
        delays = [policy.delay(failures) for _ in range(200)]
        assert all(0 <= delay <= bound for delay in delays)
        assert max(delays) > bound / 2  # spread over the range, not a fixed pause


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"attempts": 2.0},
        {"backoff": -1},
        {"max_backoff": float("inf")},
        {"backoff": float("nan")},
        {"backoff": "1"},
    ],
    ids=repr,
)
def test_bad_retry_policies_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**options)


def _flaky_store(
    server: RedisServer, prefix: str, retry: RetryPolicy | None = FAST
) -> tuple[RedisStateStore, type[WireConnection]]:
    """A store whose connections log their writes, and fail as the test says."""
    client, connection = wired_client(server.url)
    return RedisStateStore(client, prefix=prefix, retry=retry, owns_client=True), connection


async def _warm_up(store: RedisStateStore) -> None:
    """Every write's script known to the server: a first call that finds it unknown would be
    sent twice (EVALSHA, then EVAL), which is not the fault a test injects."""
    await store.append("warm-up", _turn("warm-up", 0))
    await store.save("warm-up", _turn("warm-up", 1))
    await store.restore("warm-up", SessionSnapshot(_turn("warm-up", 2)), overwrite=True)
    await store.delete("warm-up")


def _failing(error: Exception, times: int) -> Callable[[Write], BaseException | None]:
    """A fault: the next ``times`` writes fail with ``error`` (their commands never run)."""
    left = [times]

    def fault(write: Write) -> BaseException | None:
        if left[0] <= 0:
            return None
        left[0] -= 1
        return error

    return fault


@pytest.mark.parametrize(
    "error", [RedisConnectionError("reset"), RedisTimeoutError("no reply")], ids=repr
)
async def test_loads_are_retried_after_a_lost_connection_or_a_timeout(
    redis_server: RedisServer, key_prefix: str, error: Exception
) -> None:
    store, connection = _flaky_store(redis_server, key_prefix)
    await store.save("s", _turn("s", 0))
    connection.fault = _failing(error, 2)
    before = len(connection.writes)
    assert await store.load("s") == _turn("s", 0)
    assert [write.names for write in connection.writes[before:]] == [["LRANGE"]] * 3
    connection.fault = _failing(error, 3)  # more failures than tries
    with pytest.raises(StateLoadError):
        await store.load("s")
    await store.aclose()


async def test_an_append_whose_reply_was_lost_is_retried_and_stored_once(
    redis_server: RedisServer, key_prefix: str
) -> None:
    store, connection = _flaky_store(redis_server, key_prefix)
    await _warm_up(store)
    await store.append("s", _turn("s", 0))
    before = len(connection.writes)
    connection.lose_replies = 1  # the append runs; its reply never comes
    assert await store.append("s", _turn("s", 1)) == 4
    assert [write.names for write in connection.writes[before:]] == [["EVALSHA"]] * 2  # retried
    assert await store.load("s") == [*_turn("s", 0), *_turn("s", 1)]  # once
    await store.aclose()


@pytest.mark.parametrize("write", ["append", "save", "delete", "restore"])
async def test_the_documented_caller_retry_applies_a_write_once(
    redis_server: RedisServer, key_prefix: str, write: str
) -> None:
    store, connection = _flaky_store(redis_server, key_prefix, retry=None)
    await _warm_up(store)
    await store.save("s", _turn("s", 0))
    connection.lose_replies = 1  # the write runs; its reply never comes; no retry of the store's

    async def call(write_id: str | None = None) -> Any:
        if write == "append":
            return await store.append("s", _turn("s", 1), write_id=write_id)
        if write == "save":
            return await store.save("s", _turn("s", 2), write_id=write_id)
        if write == "delete":
            return await store.delete("s", write_id=write_id)
        snapshot = SessionSnapshot(_turn("s", 3))
        return await store.restore("s", snapshot, overwrite=True, write_id=write_id)

    with pytest.raises(OutcomeUnknownError) as caught:
        await call()
    assert caught.value.write_id is not None and caught.value.session_id == "s"
    if write in ("append", "save"):
        assert list(caught.value.messages) == _turn("s", 1 if write == "append" else 2)
    await store.append("s", _turn("s", 9))  # another writer's turn, acknowledged
    await call(caught.value.write_id)  # the documented retry: applied at most once
    expected = {
        "append": [*_turn("s", 0), *_turn("s", 1), *_turn("s", 9)],
        "save": [*_turn("s", 2), *_turn("s", 9)],
        "delete": _turn("s", 9),
        "restore": [*_turn("s", 3), *_turn("s", 9)],
    }
    assert await store.load("s") == expected[write]  # nothing doubled, nothing undone
    await store.aclose()


async def test_an_append_that_never_left_the_client_is_retried(
    redis_server: RedisServer, key_prefix: str
) -> None:
    store, connection = _flaky_store(redis_server, key_prefix)
    connection.refuse_connects = 2
    assert await store.append("s", _turn("s", 1)) == 2
    assert connection.connects == 3  # two refused, then the append went out
    assert await store.load("s") == _turn("s", 1)  # once
    await store.aclose()


@pytest.mark.parametrize("write", ["append", "save", "delete"])
async def test_a_write_sent_then_retried_without_a_connection_is_an_unknown_outcome(
    redis_server: RedisServer, key_prefix: str, write: str
) -> None:
    """The first try runs and its reply is lost; the retries find no connection. The caller
    must hear "outcome unknown", not "nothing was written" (the last try's verdict alone)."""
    store, connection = _flaky_store(redis_server, key_prefix)
    await _warm_up(store)
    await store.save("s", _turn("s", 0))
    connection.lose_replies = 1  # the write runs; its reply never comes
    connection.refuse_connects = 2  # and the store's two retries find no server
    with pytest.raises(OutcomeUnknownError, match="may have been applied"):
        if write == "append":
            await store.append("s", _turn("s", 1))
        elif write == "save":
            await store.save("s", _turn("s", 1))
        else:
            await store.delete("s")
    assert connection.connects >= 3  # both retries were tried, and refused
    expected = {"append": [*_turn("s", 0), *_turn("s", 1)], "save": _turn("s", 1), "delete": []}
    assert await store.load("s") == expected[write]  # it had been applied
    await store.aclose()


async def test_no_retry_policy_means_one_try(redis_server: RedisServer, key_prefix: str) -> None:
    store, connection = _flaky_store(redis_server, key_prefix, retry=None)
    connection.fault = _failing(RedisConnectionError("reset"), 1)
    with pytest.raises(StateLoadError):
        await store.load("s")
    assert [write.names for write in connection.writes] == [["LRANGE"]]
    await store.aclose()


# A server killed and restarted ----------------------------------------------------------------


@pytest.mark.redis
async def test_a_killed_server_fails_calls_fast_and_loses_no_acknowledged_turn(
    server: RedisServer, key_prefix: str, loop_errors: list[dict[str, Any]]
) -> None:
    store = RedisStateStore.from_url(
        server.url, prefix=key_prefix, socket_timeout=1.0, socket_connect_timeout=0.5, retry=FAST
    )
    acknowledged: dict[str, list[int]] = {}
    failed_in: list[float] = []
    up_again = asyncio.Event()
    done_after_restart: dict[str, int] = {}

    async def session(name: str) -> None:
        acknowledged[name] = []
        index = 0
        deadline = time.monotonic() + 20
        while done_after_restart.get(name, 0) < 3 and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                await store.append(name, _turn(name, index))
                acknowledged[name].append(index)
                await store.load(name, limit=4)
                if up_again.is_set():
                    done_after_restart[name] = done_after_restart.get(name, 0) + 1
            except StoreError:
                failed_in.append(time.monotonic() - started)
                if restarted_at is not None and started > restarted_at:
                    failed_after_restart.append(name)
                await asyncio.sleep(0.01)
            index += 1

    restarted_at: float | None = None
    failed_after_restart: list[str] = []

    async def crash() -> None:
        nonlocal restarted_at
        await asyncio.sleep(0.3)
        server.kill()  # SIGKILL, mid-workload
        await asyncio.sleep(0.5)
        server.start()  # same port, same directory: the AOF is replayed
        restarted_at = time.monotonic()
        up_again.set()

    await asyncio.gather(crash(), *(session(f"s{n}") for n in range(200)))

    assert all(count >= 3 for count in done_after_restart.values())  # the same store, working
    assert len(done_after_restart) == 200
    # Nothing rebuilt: the first calls after the restart already succeed (the store notices the
    # connections the old server closed and opens new ones).
    assert failed_after_restart == []
    assert failed_in, "the kill should have failed some calls"
    # Down, a call fails within its tries of the connect timeout (plus backoff), never hangs.
    assert max(failed_in) < 3 * 0.5 + 1.0
    for name, indexes in acknowledged.items():
        history = await store.load(name)
        for index in indexes:
            turn = _turn(name, index)
            at = history.index(turn[0])
            assert history[at : at + 2] == turn  # present, and whole
    assert await _our_connections(server) <= store.max_in_flight  # nothing leaked
    await store.aclose()
    assert loop_errors == []


@pytest.mark.redis
async def test_the_first_calls_after_a_restart_succeed(
    server: RedisServer, key_prefix: str
) -> None:
    store = RedisStateStore.from_url(server.url, prefix=key_prefix, retry=None)
    names = [f"r{n}" for n in range(100)]
    await asyncio.gather(*(store.append(name, _turn(name, 0)) for name in names))
    server.kill()  # while the store's connections sit idle
    server.start()
    await asyncio.sleep(0.05)  # the loop sees the old server's connections close
    # No retries: every connection the store held is dead, and none of it may reach a caller.
    lengths = await asyncio.gather(*(store.append(name, _turn(name, 1)) for name in names))
    assert lengths == [4] * 100
    await store.aclose()


# A server that stalls -------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_stalled_server_times_out_and_the_pipeline_policy_applies(
    server: RedisServer, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStateStore.from_url(
        server.url, prefix=key_prefix, socket_timeout=0.3, socket_connect_timeout=0.3, retry=FAST
    )
    middleware = StateMiddleware(store, StateMiddlewareConfig(max_messages=10))
    pipe = Pipeline(middleware, ProviderMiddleware(ScriptedProvider()))
    strict = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(on_load_error="raise")),
        ProviderMiddleware(ScriptedProvider()),
    )
    await pipe.execute_with_session("s", "user", "My name is Alice")
    server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="chatstate"):
            with pytest.raises(StateSaveError) as caught:
                await pipe.execute_with_session("s", "user", "What's my name?")
        # The load timed out (3 tries), the turn went on with no history, the append timed out.
        assert time.monotonic() - started < 3 * 0.3 + 0.3 + 1.0
        assert middleware.load_errors == 1
        assert "continuing with empty history" in caplog.text
        assert caught.value.messages[0].text == "What's my name?"
        with pytest.raises(StateLoadError):
            await strict.execute_with_session("s", "user", "Anyone there?")
    finally:
        server.resume()
    result = await pipe.execute_with_session("s", "user", "What's my name?")
    assert "Alice" in result.response.text  # the first turn is there; nothing was half-stored
    assert [m.text for m in await store.load("s")].count("What's my name?") == 1
    await store.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["auto-pipeline", "plain"])
@pytest.mark.parametrize("stage", ["load", "append"])
async def test_a_turn_cancelled_midway_is_stored_whole_or_not_at_all(
    server: RedisServer, key_prefix: str, stage: str, auto_pipeline: bool
) -> None:
    store = RedisStateStore.from_url(
        server.url, prefix=key_prefix, socket_timeout=5, auto_pipeline=auto_pipeline
    )

    stall = [stage == "append"]

    def reply(messages: Sequence[Message]) -> str:
        if stall[0]:
            server.pause()  # the load went through; the append will wait on a stalled server
        return f"answer to {messages[-1].text}"

    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(max_messages=-1)),
        ProviderMiddleware(ScriptedProvider(reply)),
    )
    stored = 0
    for index in range(10):
        if stage == "load":
            server.pause()
        turn = asyncio.create_task(pipe.execute_with_session("s", "user", f"message {index}"))
        await asyncio.sleep(0.05)
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
        server.resume()
        history = await store.load("s")
        assert len(history) % 2 == 0  # whole turns only
        users = [message.text for message in history if message.role == "user"]
        assert len(users) == len(set(users))  # none twice
        stored = len(users)
    if stage == "load":
        assert stored == 0  # cancelled before anything was sent
    stall[0] = False
    result = await pipe.execute_with_session("s", "user", "still there?")
    assert result.response.text == "answer to still there?"  # the connections are fine
    assert await _our_connections(server) <= store.max_in_flight  # none leaked
    pool = store.client.connection_pool  # type: ignore[union-attr]
    await store.aclose()
    assert not pool._in_use_connections  # every connection is back in the pool
