"""The SQLite store on each event loop anyio runs, asyncio and trio (through anyio's pytest
plugin; see ``pytest_collection_modifyitems`` in conftest.py): its operations, a lease, a fold,
and what a cancelled caller leaves behind. Plain fixtures only: pytest-asyncio would run async
ones on asyncio."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import pytest
import sniffio

from chatstate import Message
from chatstate.errors import LeaseTimeoutError
from chatstate.stores.sqlite import SQLiteStateStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _turn(number: int, size: int = 0) -> list[Message]:
    return [
        Message(role="user", content=f"question {number}" + "." * size),
        Message(role="assistant", content=f"answer {number}"),
    ]


async def _fold_two(history: list[Message], summary: Message | None) -> tuple[int, Message]:
    return 2, Message(role="system", content=f"summary of {history[0].text}")


async def test_the_store_runs_on_this_event_loop(tmp_path: Path, anyio_backend: str) -> None:
    assert sniffio.current_async_library() == anyio_backend  # really on trio, for trio
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as store, SQLiteStateStore(path) as other:
        assert await store.append("s", _turn(1) + _turn(2), max_messages=3, ttl=60) == 3
        messages, version = await store.load_versioned("s")
        assert [m.text for m in messages] == ["answer 1", "question 2", "answer 2"]
        assert await other.version("s") == version  # one file, two stores
        assert await store.compact("s", _fold_two)
        history, summary = await other.load_with_summary("s")
        assert [m.text for m in history] == ["answer 2"]
        assert summary is not None and summary.text == "summary of answer 1"
        async with store.lease("s", ttl=5, timeout=1):
            with pytest.raises(LeaseTimeoutError):
                async with other.lease("s", ttl=5, timeout=0.05):
                    pass
        async with other.lease("s", ttl=5, timeout=1):  # given back on exit
            await other.save("s", _turn(3))
        snapshot = await store.snapshot("s")
        assert snapshot is not None and await store.restore("copy", snapshot)
        assert [m.text for m in await other.load("copy")] == ["question 3", "answer 3"]
        assert [s async for s in store.session_ids()] == ["copy", "s"]
        assert await store.delete("s") and not await other.exists("s")
        assert (await store.metrics()).active_sessions == 1


def _big_turn() -> list[Message]:
    """A write long enough to be caught while it runs: some 20 MB, stored uncompressed."""
    return [Message(role="user", content=f"{n} " + "x" * 10_000) for n in range(2_000)]


async def _write_lock_taken(path: Path) -> None:
    """Return once a transaction of the store holds the file's write lock."""
    with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as probe:
        with anyio.fail_after(10):
            while True:
                try:
                    probe.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:  # locked: the write is under way
                    return
                probe.execute("ROLLBACK")
                await anyio.sleep(0.001)


async def test_a_caller_cancelled_mid_write_leaves_no_transaction_open(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "chat.db"
    big = _big_turn()
    async with SQLiteStateStore(path, compress_over=None) as store:
        await store.append("s", _turn(1))
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def cancel_once_it_writes() -> None:
                    await _write_lock_taken(path)
                    scope.cancel()

                group.start_soon(cancel_once_it_writes)
                await store.append("s", big)
        assert scope.cancelled_caught
        # The cancelled caller left no transaction behind: another writer gets the lock at once.
        with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as raw:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
        # Nothing half-written: the whole turn or none of it.
        stored = await store.load("s")
        assert len(stored) in (2, 2 + len(big))
        assert await store.append("s", _turn(2)) == len(stored) + 2  # the next write works
        assert [m.text for m in (await store.load("s"))[-2:]] == ["question 2", "answer 2"]


async def test_a_caller_cancelled_before_its_write_began_writes_nothing(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "chat.db"
    big = _big_turn()
    async with SQLiteStateStore(path, compress_over=None) as store:
        await store.append("s", _turn(1))  # the file and its tables exist
        async with anyio.create_task_group() as group:
            group.start_soon(store.append, "big", big)
            await _write_lock_taken(path)
            with anyio.move_on_after(0.01) as scope:
                await store.append("small", _turn(1))  # queued behind it, then cancelled
            assert scope.cancelled_caught
        assert len(await store.load("big")) == len(big)
        assert await store.load("small") == []  # withdrawn: it never ran
        assert await store.append("small", _turn(2)) == 2
