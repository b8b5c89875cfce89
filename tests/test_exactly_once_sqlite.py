"""Exactly-once writes on SQLite when things go wrong (issue 16): a caller cancelled while its
transaction runs on the store's thread, then retrying with its write id; two stores (two
processes' instances) on one file, replaying each other's writes; a file locked by another
writer, which fails a write as certainly not applied. On asyncio and trio."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from chatstate import Message, OutcomeUnknownError, StateSaveError
from chatstate.stores import SessionSnapshot
from chatstate.stores.sqlite import SQLiteStateStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _turn(tag: str) -> list[Message]:
    return [Message(role="user", content=f"{tag}?"), Message(role="assistant", content=f"{tag}.")]


def _texts(messages: list[Message]) -> list[str]:
    return [message.text for message in messages]


class GateClock:
    """The store's wall clock, which a transaction reads right after it began: armed, that read
    waits (on the store's thread) until the test lets it go, so the test knows the transaction is
    running and can cancel its caller there."""

    def __init__(self) -> None:
        self.armed = False
        self.inside = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> float:
        if self.armed:
            self.armed = False
            self.inside.set()
            assert self.go.wait(10), "the test never let the transaction go on"
        return time.time()  # the wall clock, as the other instance on the file reads it


Write = Callable[[SQLiteStateStore, str], Awaitable[Any]]

WRITES: dict[str, tuple[Write, list[str]]] = {
    "append": (
        lambda store, wid: store.append("s", _turn("A"), write_id=wid),
        _texts(_turn("before") + _turn("A")),
    ),
    "save": (lambda store, wid: store.save("s", _turn("A"), write_id=wid), _texts(_turn("A"))),
    "delete": (lambda store, wid: store.delete("s", write_id=wid), []),
    "restore": (
        lambda store, wid: store.restore(
            "s", SessionSnapshot(_turn("A")), overwrite=True, write_id=wid
        ),
        _texts(_turn("A")),
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_caller_cancelled_while_its_transaction_runs_retries_it_once(
    tmp_path: Path, write: str
) -> None:
    """The caller gives its write id up front (a cancelled caller gets no error to read it
    from), is cancelled while its transaction runs on the store's thread (the transaction
    commits: the caller waits for it, then takes the cancellation), another instance on the
    same file appends, and the caller retries: applied once, the other's turn kept."""
    call, after = WRITES[write]
    path = tmp_path / "chat.db"
    clock = GateClock()
    async with SQLiteStateStore(path, clock=clock) as a, SQLiteStateStore(path) as b:
        await a.save("s", _turn("before"))
        clock.armed = True
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def cancelled_write() -> None:
                with scope:
                    await call(a, "turn-7")
                    pytest.fail("the write should have been cancelled")

            group.start_soon(cancelled_write)
            await anyio.to_thread.run_sync(clock.inside.wait)  # its transaction runs
            scope.cancel()
            await anyio.sleep(0.01)  # the caller is cancelled while the transaction runs
            clock.go.set()
        assert scope.cancelled_caught
        assert _texts(await b.load("s")) == after  # it committed all the same
        await b.append("s", _turn("B"))  # another instance's turn, acknowledged
        await call(a, "turn-7")  # the caller's retry, with the id it gave
        assert _texts(await b.load("s")) == [*after, *_texts(_turn("B"))]


async def test_a_caller_cancelled_before_its_transaction_began_stores_nothing_until_retried(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    clock = GateClock()
    async with SQLiteStateStore(path, clock=clock) as a:
        await a.save("s", _turn("before"))
        clock.armed = True
        async with anyio.create_task_group() as group:
            group.start_soon(a.append, "other", _turn("holds the thread"))
            await anyio.to_thread.run_sync(clock.inside.wait)  # the thread is busy
            with anyio.move_on_after(0.05) as scope:
                await a.append("s", _turn("A"), write_id="turn-8")  # queued, then withdrawn
            clock.go.set()
        assert scope.cancelled_caught
        assert _texts(await a.load("s")) == _texts(_turn("before"))  # never ran
        await a.append("s", _turn("A"), write_id="turn-8")
        await a.append("s", _turn("A"), write_id="turn-8")
        assert _texts(await a.load("s")) == _texts(_turn("before") + _turn("A"))


async def test_two_stores_on_one_file_replaying_each_others_writes_apply_each_once(
    tmp_path: Path,
) -> None:
    """Two instances on one file write at once, and replay (as a caller retry would) writes
    already acknowledged, their own and the other's, a late save and delete among them: every
    turn once, and no replay undoes what came after its first run."""
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as a, SQLiteStateStore(path) as b:
        await a.save("s", _turn("first save"), write_id="save-1")
        await b.append("s", _turn("b1"), write_id="b1")
        await b.save("s", _turn("first save"), write_id="save-1")  # a late replay: a no-op
        await a.append("s", _turn("b1"), write_id="b1")  # a replay of the other's: a no-op
        assert _texts(await a.load("s")) == _texts(_turn("first save") + _turn("b1"))
        assert await a.delete("s", write_id="delete-1") is True
        await b.append("s", _turn("next"), write_id="next")  # the user's next message
        assert await b.delete("s", write_id="delete-1") is True  # a late replay: a no-op
        assert _texts(await a.load("s")) == _texts(_turn("next"))

        # Four writers, two on each instance, 28 turns in all: fewer than the 32 writes a session
        # remembers, so every replay must be recognised, however long it waited for the file's
        # lock (a writer can wait out many of the other instance's writes).
        acknowledged: list[str] = []

        async def writer(store: SQLiteStateStore, name: str) -> None:
            for index in range(7):
                write_id = f"{name}-{index}"
                await store.append("t", _turn(write_id), write_id=write_id)
                acknowledged.append(write_id)
                # Replay acknowledged writes (any instance's) through this instance.
                for replay in acknowledged[-3:]:
                    await store.append("t", _turn(replay), write_id=replay)

        async with anyio.create_task_group() as group:
            for name, store in [("a", a), ("b", b), ("a2", a), ("b2", b)]:
                group.start_soon(writer, store, name)
        history = _texts(await a.load("t"))
        assert sorted(history) == sorted(_texts([m for w in acknowledged for m in _turn(w)]))
        assert len(history) == len(set(history)) == 2 * 28


LOCKED: dict[str, Callable[[SQLiteStateStore, str | None], Awaitable[Any]]] = {
    "append": lambda store, wid: store.append("s", _turn("A"), write_id=wid),
    "save": lambda store, wid: store.save("s", _turn("A"), write_id=wid),
    "delete": lambda store, wid: store.delete("s", write_id=wid),
    "restore": lambda store, wid: store.restore(
        "s", SessionSnapshot(_turn("A")), overwrite=True, write_id=wid
    ),
}


@pytest.mark.parametrize("write", list(LOCKED))
async def test_a_write_to_a_locked_file_is_not_applied_and_its_retry_applies_it_once(
    tmp_path: Path, write: str
) -> None:
    """Another process holds the file's write lock past the busy timeout: the write fails as
    certainly not applied (StateSaveError, not OutcomeUnknownError), nothing of it is stored;
    the caller's retry with the error's write id applies it, once."""
    call = LOCKED[write]
    path = tmp_path / "chat.db"
    after = WRITES[write][1]
    async with SQLiteStateStore(path, busy_timeout=0.1) as store:
        await store.save("s", _turn("before"))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StateSaveError) as caught:
                await call(store, None)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        error = caught.value
        assert not isinstance(error, OutcomeUnknownError)
        assert "nothing was written" in str(error) and error.write_id is not None
        assert _texts(await store.load("s")) == _texts(_turn("before"))  # not applied
        await call(store, error.write_id)
        await call(store, error.write_id)  # and again: a no-op
        assert _texts(await store.load("s")) == after


async def test_a_turn_cancelled_while_taking_the_lease_gives_it_back(tmp_path: Path) -> None:
    """Issue 16, finding 8, on SQLite: the caller is cancelled while the acquiring transaction
    runs (and commits); what it took is given back, so another instance on the file takes the
    lease at once rather than after its 30 s."""
    path = tmp_path / "chat.db"
    clock = GateClock()
    async with SQLiteStateStore(path, clock=clock) as a, SQLiteStateStore(path) as b:
        clock.armed = True
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def take() -> None:
                with scope:
                    async with a.lease("s", ttl=30, timeout=10):
                        pytest.fail("the lease should not have been taken")

            group.start_soon(take)
            await anyio.to_thread.run_sync(clock.inside.wait)  # the acquire runs
            scope.cancel()
            await anyio.sleep(0.01)
            clock.go.set()
        assert scope.cancelled_caught
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT count(*) FROM chatstate_leases").fetchone() == (0,)
        async with b.lease("s", ttl=30, timeout=0.5):
            pass  # free at once
