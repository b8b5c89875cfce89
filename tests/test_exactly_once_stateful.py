"""Hypothesis drives random writes (append, save, delete, restore, each with its own write id),
faults (a reply lost after the write ran, a write lost before it ran, a write refused before it
was sent) and retries of earlier writes with their ids, against a model that applies each write
id once (while the session remembers it: its last 32 writes). After every step the store must
hold exactly what the model holds.

Faults come from a backend wrapper (memory, SQLite, and the Redis backend over fakeredis) that
runs the write and then raises an error of the "timeout" kind, or raises before running it; and,
on a real redis-server, from the wire (``tests/redis_wire.py``: replies lost after the write
ran, which the store's own retry policy meets first).
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import fakeredis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chatstate import (
    InMemoryStateStore,
    Message,
    OutcomeUnknownError,
    RedisStateStore,
    RetryPolicy,
    StateSaveError,
)
from chatstate.stores import BackendStore, SessionSnapshot
from chatstate.stores._backend import ErrorKind
from chatstate.stores._writes import WRITE_IDS_KEPT
from chatstate.stores.sqlite import SQLiteStateStore

from .conftest import kinds
from .redis_wire import WireConnection, wired_client

T = TypeVar("T")

SESSIONS = ["a", "b"]
OPS = ["append", "save", "delete", "restore", "restore-overwrite"]


class Lost(Exception):
    """Sent, and no reply came: the write may have run (the wrapper's "timeout")."""


class NotSent(Exception):
    """No connection: the write certainly did not run (the wrapper's "unavailable")."""


class FaultyBackend:
    """A backend that, when told, runs the next write and then raises :class:`Lost` (the reply
    lost), or raises before running it: :class:`Lost` (lost on its way) or :class:`NotSent`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.fault = "none"

    def __getattr__(self, name: str) -> Any:
        if name in ("append_now", "entries_now"):
            # The in-memory backend's plain-call paths would go round the faults: every write
            # here goes through append and the rest of the protocol.
            raise AttributeError(name)
        return getattr(self._inner, name)

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        if isinstance(exc, Lost):
            return "timeout"
        if isinstance(exc, NotSent):
            return "unavailable"
        kind: ErrorKind | None = self._inner.error_kind(exc)
        return kind

    async def _write(self, name: str, *args: Any, **options: Any) -> Any:
        fault, self.fault = self.fault, "none"
        if fault == "unsent":
            raise NotSent("no connection (injected)")
        if fault == "dropped":
            raise Lost("the connection dropped before the write reached the server (injected)")
        done = await getattr(self._inner, name)(*args, **options)
        if fault == "lost":
            raise Lost("the write ran; its reply was lost (injected)")
        return done

    async def append(self, *args: Any, **options: Any) -> Any:
        return await self._write("append", *args, **options)

    async def replace(self, *args: Any, **options: Any) -> Any:
        return await self._write("replace", *args, **options)

    async def delete(self, *args: Any, **options: Any) -> Any:
        return await self._write("delete", *args, **options)


# -- the model ----------------------------------------------------------------------------------


@dataclass
class Model:
    """What a store must do with write ids, in the plainest terms."""

    sessions: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)  # kept through deletes

    def seen(self, session: str, write_id: str) -> bool:
        return write_id in self.ids.get(session, [])

    def _remember(self, session: str, write_id: str) -> None:
        ids = self.ids.setdefault(session, [])
        ids.append(write_id)
        del ids[:-WRITE_IDS_KEPT]

    def apply(self, write: Write) -> Any:
        """Apply ``write`` unless its id is remembered; what the store returns for it (None
        where a retry's answer is not specified: a delete repeated)."""
        session, texts = write.session, write.texts
        now = self.sessions.get(session, [])
        if self.seen(session, write.write_id):
            return {"append": len(now), "save": None, "delete": None}.get(write.op, True)
        if write.op == "append":
            self.sessions[session] = [*now, *texts]
        elif write.op == "save":
            self.sessions[session] = list(texts)
        elif write.op == "delete":
            self.sessions.pop(session, None)
        elif now and write.op == "restore":
            return False  # it exists, and no overwrite: nothing written, nothing remembered
        else:
            self.sessions[session] = list(texts)
        self._remember(session, write.write_id)
        if write.op == "append":
            return len(self.sessions[session])
        return {"save": None, "delete": bool(now)}.get(write.op, True)


@dataclass(frozen=True)
class Write:
    op: str
    session: str
    write_id: str
    texts: tuple[str, ...]

    def messages(self) -> list[Message]:
        return [
            Message(role="user" if index % 2 == 0 else "assistant", content=text)
            for index, text in enumerate(self.texts)
        ]

    async def run(self, store: BackendStore[Any]) -> Any:
        if self.op == "append":
            return await store.append(self.session, self.messages(), write_id=self.write_id)
        if self.op == "save":
            return await store.save(self.session, self.messages(), write_id=self.write_id)
        if self.op == "delete":
            return await store.delete(self.session, write_id=self.write_id)
        snapshot = SessionSnapshot(self.messages())
        overwrite = self.op == "restore-overwrite"
        return await store.restore(
            self.session, snapshot, overwrite=overwrite, write_id=self.write_id
        )


# -- the stores ---------------------------------------------------------------------------------


@dataclass
class Faulted:
    """A store, how to inject the next write's fault, and how to close it all."""

    store: BackendStore[Any]
    inject: Callable[[str], None]
    faults: list[str]
    close: Callable[[], Awaitable[None]]


def _wrapped(store: BackendStore[Any], close: Callable[[], Awaitable[None]]) -> Faulted:
    backend = FaultyBackend(store.backend)
    store.backend = cast(Any, backend)
    # The core took the in-memory backend's plain-call paths when it was made: they would go
    # round the faults, so this store goes through the protocol alone.
    store._append_now = store._entries_now = None

    def inject(fault: str) -> None:
        backend.fault = fault

    return Faulted(store, inject, ["none", "lost", "dropped", "unsent"], close)


async def _memory(_: str | None) -> Faulted:
    store = InMemoryStateStore()
    return _wrapped(store, store.aclose)


async def _sqlite(_: str | None) -> Faulted:
    folder = tempfile.TemporaryDirectory()
    store = SQLiteStateStore(Path(folder.name) / "chat.db")

    async def close() -> None:
        await store.aclose()
        folder.cleanup()

    return _wrapped(store, close)


async def _fakeredis(_: str | None) -> Faulted:
    client = fakeredis.FakeAsyncRedis()
    store = RedisStateStore(client, prefix="exactly-once")

    async def close() -> None:
        await store.aclose()
        await client.aclose()

    return _wrapped(store, close)


_prefixes = itertools.count()


async def _redis(url: str | None) -> Faulted:
    """A real server: the wire loses replies after the write ran; the store retries once (no
    delay), so one lost reply is met by the store's retry and two reach the caller."""
    assert url is not None
    client, connection = wired_client(url)
    prefix = f"exactly-once-{next(_prefixes)}"
    store = RedisStateStore(client, prefix=prefix, retry=RetryPolicy(attempts=2, backoff=0))
    # Every write's script known to the server first: a NOSCRIPT would send a write twice.
    warm = "warm-up"
    await store.append(warm, [Message(role="user", content="w")])
    await store.restore(warm, SessionSnapshot([Message(role="user", content="w")]), overwrite=True)
    await store.delete(warm)

    def inject(fault: str) -> None:
        cast(type[WireConnection], connection).lose_replies = {"lost": 1, "lost-twice": 2}.get(
            fault, 0
        )

    async def close() -> None:
        # The server is the whole session's: leave none of this example's keys on it (tests that
        # scan it, such as the census's, count every key there).
        cast(type[WireConnection], connection).lose_replies = 0
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await store.aclose()
        await client.aclose()

    return Faulted(store, inject, ["none", "lost", "lost-twice"], close)


KINDS: dict[str, tuple[Callable[[str | None], Awaitable[Faulted]], str | None, int]] = {
    "memory": (_memory, None, 40),
    "sqlite": (_sqlite, None, 20),
    "fakeredis": (_fakeredis, None, 15),
    "redis": (_redis, "redis_server", 20),
}


# -- the machine --------------------------------------------------------------------------------


class ExactlyOnceMachine(RuleBasedStateMachine):
    make: Callable[[str | None], Awaitable[Faulted]] = staticmethod(_memory)
    url: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.faulted = self.run(self.make(self.url))
        self.model = Model()
        self.writes: list[Write] = []
        self.numbers = itertools.count()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)  # type: ignore[arg-type]

    def teardown(self) -> None:
        try:
            self.run(self.faulted.close())
        finally:
            self.loop.close()

    def _new(self, op: str, session: str, count: int = 2) -> Write:
        number = next(self.numbers)
        texts = tuple(f"{number}-{index}" for index in range(count))
        return Write(op, session, f"write-{number}", texts)

    def _check(self, write: Write, fault: str) -> None:
        self.writes.append(write)
        self.faulted.inject(fault)
        try:
            result = self.run(write.run(self.faulted.store))
        except StateSaveError as exc:
            assert exc.session_id == write.session
            assert exc.write_id == write.write_id
            assert exc.messages == tuple(write.messages()) or write.op == "delete"
            if fault in ("lost", "lost-twice"):
                assert isinstance(exc, OutcomeUnknownError)
                self.model.apply(write)  # it ran, once
            elif fault == "dropped":
                assert isinstance(exc, OutcomeUnknownError)  # it did not run
            else:
                assert fault == "unsent" and not isinstance(exc, OutcomeUnknownError)
            return
        assert fault in ("none", "lost"), f"{fault}: {write} should have failed"
        expected = self.model.apply(write)
        if expected is not None:
            assert result == expected, (write, result, expected)

    @rule(
        op=st.sampled_from(OPS),
        session=st.sampled_from(SESSIONS),
        count=st.integers(1, 3),
        data=st.data(),
    )
    def write(self, op: str, session: str, count: int, data: st.DataObject) -> None:
        fault = data.draw(st.sampled_from(self.faulted.faults), label="fault")
        self._check(self._new(op, session, count), fault)

    @precondition(lambda self: bool(self.writes))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """An earlier write again, with its id: the store's answer is the model's."""
        # Mostly one of the last few writes (a retry follows its failure soon), sometimes any.
        back = data.draw(
            st.one_of(st.integers(1, min(4, len(self.writes))), st.integers(1, len(self.writes))),
            label="writes back",
        )
        write = self.writes[-back]
        fault = data.draw(st.sampled_from(self.faulted.faults), label="fault")
        self._check(write, fault)

    @rule(session=st.sampled_from(SESSIONS))
    def burst(self, session: str) -> None:
        """Many appends: earlier writes of the session drop out of what it remembers (the
        documented bound), and a retry of one of them is applied again."""
        for _ in range(12):
            self._check(self._new("append", session, 1), "none")

    @invariant()
    def the_store_holds_what_the_model_holds(self) -> None:
        for session in SESSIONS:
            loaded = self.run(self.faulted.store.load(session))
            assert [message.text for message in loaded] == self.model.sessions.get(session, [])


@pytest.mark.slow  # hypothesis: dozens of examples per store
@pytest.mark.parametrize("kind", kinds(*KINDS))
def test_every_write_is_applied_once_whatever_faults_and_retries(
    kind: str, request: pytest.FixtureRequest
) -> None:
    make, server, examples = KINDS[kind]
    url = request.getfixturevalue(server).url if server else None
    machine = type("Machine", (ExactlyOnceMachine,), {"make": staticmethod(make), "url": url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_model_is_not_trivially_agreeable() -> None:
    model = Model()
    first = Write("append", "s", "w1", ("1", "2"))
    assert model.apply(first) == 2
    assert model.apply(first) == 2  # a retry: not applied again
    assert model.apply(Write("save", "s", "w2", ("3",))) is None
    assert model.apply(first) == 1 and model.sessions["s"] == ["3"]
    assert model.apply(Write("restore", "s", "w3", ("4",))) is False  # exists: not written
    assert model.apply(Write("restore", "s", "w3", ("4",))) is False  # nor remembered
    assert model.apply(Write("delete", "s", "w4", ())) is True
    for number in range(WRITE_IDS_KEPT):
        model.apply(Write("append", "s", f"x{number}", ("x",)))
    assert model.apply(first) == WRITE_IDS_KEPT + 2  # forgotten: applied again
