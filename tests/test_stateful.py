"""Hypothesis drives random sequences and interleavings of load, append, save, delete and the
passing of time on a few sessions, against each store and against a plain model of what a store
must do; every answer must match the model's."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from redis.asyncio import Redis, RedisCluster

from chatstate import InMemoryStateStore, Message, RedisStateStore, StateStore
from chatstate.stores.postgres import PostgresStateStore
from chatstate.stores.sqlite import SQLiteStateStore

from .conftest import FakeClock, kinds
from .redis_time import advance_redis_time

T = TypeVar("T")

SESSIONS = ["a", "b", "user-{1}", "*"]
# TTLs long against the real time an example takes on a real server (whose clock also runs), so
# only the simulated time decides what expires.
TTLS = st.sampled_from([None, 10.0, 30.0])
BOUNDS = st.sampled_from([None, 1, 3, 5])
LIMITS = st.sampled_from([None, 0, 1, 2, 5])


@dataclass
class _Session:
    messages: list[Message] = field(default_factory=list)
    expires_at: float | None = None


class Model:
    """What every store must do, in the plainest terms."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sessions: dict[str, _Session] = {}

    def _live(self, session_id: str) -> _Session | None:
        session = self.sessions.get(session_id)
        if (
            session is not None
            and session.expires_at is not None
            and session.expires_at <= self.now
        ):
            del self.sessions[session_id]
            return None
        return session

    def load(self, session_id: str, limit: int | None) -> list[Message]:
        session = self._live(session_id)
        messages = session.messages if session else []
        return messages[-limit:] if limit else ([] if limit == 0 else list(messages))

    def append(
        self, session_id: str, messages: list[Message], bound: int | None, ttl: float | None
    ) -> int:
        session = self._live(session_id)
        if not messages:
            return len(session.messages) if session else 0
        if session is None:
            session = self.sessions[session_id] = _Session()
        session.messages.extend(messages)
        if bound is not None:
            del session.messages[:-bound]
        session.expires_at = None if ttl is None else self.now + ttl
        return len(session.messages)

    def save(self, session_id: str, messages: list[Message], ttl: float | None) -> None:
        self.sessions.pop(session_id, None)
        if messages:
            self.sessions[session_id] = _Session(
                list(messages), None if ttl is None else self.now + ttl
            )

    def delete(self, session_id: str) -> bool:
        existed = self._live(session_id) is not None
        self.sessions.pop(session_id, None)
        return existed


_numbers = itertools.count()


def _messages(count: int) -> list[Message]:
    return [
        Message(role="user" if index % 2 == 0 else "assistant", content=f"m{next(_numbers)}")
        for index in range(count)
    ]


@dataclass
class Backend:
    store: StateStore
    advance: Callable[[float], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


async def _memory(_: str | None) -> Backend:
    clock = FakeClock()
    store = InMemoryStateStore(clock=clock)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    return Backend(store, advance, store.aclose)


async def _redis_on(client: Any, prefix: str) -> Backend:
    store = RedisStateStore(client, prefix=prefix)

    async def advance(seconds: float) -> None:
        await advance_redis_time(client, seconds, match=f"{prefix}:*")

    async def close() -> None:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await store.aclose()
        await client.aclose()

    return Backend(store, advance, close)


async def _fakeredis(_: str | None) -> Backend:
    return await _redis_on(fakeredis.FakeAsyncRedis(), "stateful")


async def _redis(url: str | None) -> Backend:
    assert url is not None
    return await _redis_on(Redis.from_url(url), f"stateful-{next(_numbers)}")


async def _cluster(url: str | None) -> Backend:
    assert url is not None
    client = RedisCluster.from_url(url)
    await client.initialize()
    return await _redis_on(client, f"stateful-{next(_numbers)}")


async def _sqlite(_: str | None) -> Backend:
    clock = FakeClock(1_700_000_000.0)
    folder = tempfile.TemporaryDirectory()
    store = SQLiteStateStore(Path(folder.name) / "chat.db", clock=clock)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    async def close() -> None:
        await store.aclose()
        folder.cleanup()

    return Backend(store, advance, close)


async def _postgres(dsn: str | None) -> Backend:
    assert dsn is not None
    clock = FakeClock(1_700_000_000.0)
    schema = f"stateful_{uuid.uuid4().hex[:12]}"
    store = PostgresStateStore.from_url(dsn, schema=schema, clock=clock, sweep_interval=None)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    async def close() -> None:
        await store.drop_schema()
        await store.aclose()

    return Backend(store, advance, close)


KINDS = {
    "memory": (_memory, None, 200),
    "fakeredis": (_fakeredis, None, 60),
    "sqlite": (_sqlite, None, 60),
    "redis": (_redis, "redis_server", 60),
    "redis-cluster": (_cluster, "redis_cluster", 20),
    "postgres": (_postgres, "postgres_dsn", 60),
}


def server_url(request: pytest.FixtureRequest, server: str | None) -> str | None:
    """The URL of a kind's server fixture (a Redis server's, or the PostgreSQL DSN itself)."""
    if server is None:
        return None
    found = request.getfixturevalue(server)
    return found if isinstance(found, str) else str(found.url)


class StoreMachine(RuleBasedStateMachine):
    """One store and the model, moved in step."""

    make: Callable[[str | None], Awaitable[Backend]] = staticmethod(_memory)
    url: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend = self.run(self.make(self.url))
        self.model = Model()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)  # type: ignore[arg-type]

    def teardown(self) -> None:
        try:
            self.run(self.backend.close())
        finally:
            self.loop.close()

    @rule(session=st.sampled_from(SESSIONS), limit=LIMITS)
    def load(self, session: str, limit: int | None) -> None:
        assert self.run(self.backend.store.load(session, limit=limit)) == self.model.load(
            session, limit
        )

    @rule(session=st.sampled_from(SESSIONS), count=st.integers(0, 3), bound=BOUNDS, ttl=TTLS)
    def append(self, session: str, count: int, bound: int | None, ttl: float | None) -> None:
        messages = _messages(count)
        length = self.run(self.backend.store.append(session, messages, max_messages=bound, ttl=ttl))
        assert length == self.model.append(session, messages, bound, ttl)

    @rule(session=st.sampled_from(SESSIONS), count=st.integers(0, 4), ttl=TTLS)
    def save(self, session: str, count: int, ttl: float | None) -> None:
        messages = _messages(count)
        self.run(self.backend.store.save(session, messages, ttl=ttl))
        self.model.save(session, messages, ttl)

    @rule(session=st.sampled_from(SESSIONS))
    def delete(self, session: str) -> None:
        assert self.run(self.backend.store.delete(session)) == self.model.delete(session)

    @rule(seconds=st.sampled_from([4.0, 10.0]))
    def time_passes(self, seconds: float) -> None:
        self.run(self.backend.advance(seconds))
        self.model.now += seconds

    @rule(
        sessions=st.lists(st.sampled_from(SESSIONS), min_size=2, max_size=4, unique=True),
        bound=BOUNDS,
        ttl=TTLS,
    )
    def concurrent_turns(self, sessions: list[str], bound: int | None, ttl: float | None) -> None:
        """Several sessions at once: each loads and appends, interleaved however the loop runs
        them (on Redis, in shared pipelined writes)."""
        turns = {session: _messages(2) for session in sessions}

        async def turn(session: str) -> tuple[list[Message], int]:
            history = await self.backend.store.load(session, limit=bound)
            await asyncio.sleep(0)
            length = await self.backend.store.append(
                session, turns[session], max_messages=bound, ttl=ttl
            )
            return history, length

        async def all_turns() -> list[tuple[list[Message], int]]:
            return await asyncio.gather(*(turn(session) for session in sessions))

        expected = [
            (
                self.model.load(session, bound),
                self.model.append(session, turns[session], bound, ttl),
            )
            for session in sessions
        ]
        assert self.run(all_turns()) == expected


def run_machine(
    machine: type[StoreMachine], kind: str, request: pytest.FixtureRequest, steps: int = 25
) -> None:
    """Run ``machine`` (a StoreMachine, or a subclass) on the store of ``kind``."""
    make, server, examples = KINDS[kind]
    url = server_url(request, server)
    bound = type("Machine", (machine,), {"make": staticmethod(make), "url": url})
    run_state_machine_as_test(
        bound,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.slow  # hypothesis: hundreds of examples per store
@pytest.mark.parametrize("kind", kinds(*KINDS))
def test_every_store_behaves_like_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    run_machine(StoreMachine, kind, request)


def test_the_model_is_not_trivially_agreeable() -> None:
    # The comparison would prove nothing if the model said what any store says: check it apart.
    model = Model()
    first = _messages(3)
    assert model.append("s", first, 2, 10.0) == 2
    assert model.load("s", None) == first[1:]
    model.now += 10.0
    assert model.load("s", None) == []  # expired at its deadline
    assert model.delete("s") is False
    model.save("t", first, None)
    assert model.load("t", 0) == [] and model.load("t", 1) == first[-1:]
