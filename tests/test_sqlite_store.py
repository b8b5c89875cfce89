"""What the SQLite store does beyond the conformance suite: a file that survives restarts and is
shared by processes, its schema and indexes, its sweep, its leases, and how it fails."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path
from typing import Any

import anyio
import pytest

from chatstate import Message
from chatstate.cli import main
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    LeaseLostError,
    LeaseTimeoutError,
    StateSaveError,
    StoreError,
    UnsupportedFormatError,
)
from chatstate.sessions import Conversations
from chatstate.stores import BackendStore, StoreEvent
from chatstate.stores.sqlite import SQLiteBackend, SQLiteStateStore
from chatstate.stores.urls import open_store

from .conftest import FakeClock


def _turn(number: int) -> list[Message]:
    return [
        Message(role="user", content=f"question {number}"),
        Message(role="assistant", content=f"answer {number}"),
    ]


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as store:
        await store.append("s", _turn(1) + _turn(2), max_messages=3, ttl=3600)
        version = await store.version("s")
    async with SQLiteStateStore(path) as reopened:
        assert [m.text for m in await reopened.load("s")] == ["answer 1", "question 2", "answer 2"]
        assert await reopened.version("s") == version
        assert await reopened.exists("s") and not await reopened.exists("other")


async def test_tables_and_indexes_and_the_plan_of_a_load(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as store:
        await store.append("s", _turn(1))
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        names = {name for (name,) in raw.execute("SELECT name FROM sqlite_master")}
        assert {"chatstate_sessions", "chatstate_messages", "chatstate_sessions_expiry"} <= names
        plan = " ".join(
            str(row)
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT entry FROM chatstate_messages "
                "WHERE session_id = ? AND seq >= ? ORDER BY seq",
                ("s", 0),
            )
        )
        assert "USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan  # a range, no sort
        plan = str(
            raw.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM chatstate_sessions WHERE expires_at <= ?",
                (0,),
            ).fetchall()
        )
        assert "chatstate_sessions_expiry" in plan


async def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as store:
        await store.append("s", _turn(1))
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE chatstate_meta SET value = 99 WHERE name = 'schema'")
    async with SQLiteStateStore(path) as newer:
        with pytest.raises(UnsupportedFormatError, match="newer chatstate"):
            await newer.load("s")


async def test_the_sweep_deletes_expired_sessions_from_the_file(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, clock=clock, sweep_interval=None) as store:
        await store.append("short", _turn(1), ttl=10)
        await store.append("long", _turn(2), ttl=100)
        await store.append("forever", _turn(3))
        clock.advance(10)
        assert await store.load("short") == []  # never returned, whether swept or not
        assert await store.sweep() == 1
        assert store.expirations == 1
        metrics = await store.metrics()
        assert metrics.active_sessions == 2 and metrics.avg_history_size == 2.0
        assert metrics.storage_used > 0
    with sqlite3.connect(path) as raw:
        ids = {row[0] for row in raw.execute("SELECT DISTINCT session_id FROM chatstate_messages")}
        assert ids == {"long", "forever"}


async def test_writes_sweep_the_expired_sessions_once_per_interval(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, clock=clock, sweep_interval=10) as store:
        for index in range(5):
            await store.append(f"old{index}", _turn(index), ttl=1)  # the first write swept
        clock.advance(5)
        await store.append("new", _turn(5), ttl=60)  # expired, but no sweep is due yet
        assert _stored_sessions(path) == 6 and store.expirations == 0
        clock.advance(6)
        await store.append("newer", _turn(6), ttl=60)  # due: this write deletes them
        assert _stored_sessions(path) == 2 and store.expirations == 5


def _stored_sessions(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        (sessions,) = raw.execute(
            "SELECT count(DISTINCT session_id) FROM chatstate_messages"
        ).fetchone()
        return int(sessions)


async def test_the_store_runs_no_task_and_its_thread_ends_with_it(tmp_path: Path) -> None:
    tasks, threads = asyncio.all_tasks(), set(threading.enumerate())
    store = SQLiteStateStore(tmp_path / "c.db", sweep_interval=0.01)
    await store.append("s", _turn(1), ttl=60)
    async with store.lease("s", ttl=5, timeout=1):
        pass
    assert asyncio.all_tasks() == tasks  # nothing that could outlive the store
    (thread,) = set(threading.enumerate()) - threads
    await store.aclose()
    thread.join(timeout=5)
    assert not thread.is_alive()
    # A store dropped without aclose: collected, and its thread ends (closing the file).
    dropped = SQLiteStateStore(tmp_path / "c.db")
    await dropped.append("s", _turn(2))
    (thread,) = set(threading.enumerate()) - threads
    ref = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert ref() is None
    thread.join(timeout=5)
    assert not thread.is_alive()


async def test_a_locked_database_fails_the_append_whole_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, busy_timeout=0.1) as store:
        await store.append("s", _turn(1))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's write, holding the lock
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            with pytest.raises(StateSaveError, match="locked") as caught:
                await store.append("s", _turn(2))
        finally:
            ticker.cancel()
            blocker.execute("ROLLBACK")
            blocker.close()
        assert caught.value.messages == tuple(_turn(2)) and caught.value.session_id == "s"
        cause = caught.value.__cause__
        assert isinstance(cause, sqlite3.OperationalError)
        assert store.backend.error_kind(cause) == "unavailable"  # certainly not written
        assert ticks >= 5  # the loop ran on while the store waited for the lock
        assert [m.text for m in await store.load("s")] == ["question 1", "answer 1"]


async def test_hooks_see_every_operation_and_a_load_slides_the_expiry(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    events: list[StoreEvent] = []
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, clock=clock, sliding_ttl=60, hooks=[events.append]) as store:
        await store.append("s", _turn(1), ttl=10)
        clock.advance(5)
        assert len(await store.load("s")) == 2  # now expires 60 s from here, not at 10
        clock.advance(30)
        assert len(await store.load("s")) == 2
        assert await store.delete("s")
    assert [(event.operation, event.messages) for event in events] == [
        ("append", 2),
        ("load", 2),
        ("load", 2),
        ("delete", 0),
    ]


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "c.db")
    await store.append("s", _turn(1))
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.load("s")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"synchronous": "SOMETIMES"}, "synchronous"),
        ({"busy_timeout": -1}, "busy_timeout"),
        ({"sweep_interval": 0}, "sweep_interval"),
        ({"on_corrupt": "ignore"}, "on_corrupt"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLiteStateStore(tmp_path / "c.db", **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="path"):
        SQLiteStateStore(3)  # type: ignore[arg-type]


async def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///relative.db") as store:
        assert isinstance(store, SQLiteStateStore)
        await store.append("s", _turn(1))
    assert (tmp_path / "relative.db").exists()
    absolute = tmp_path / "sub" / "absolute.db"
    absolute.parent.mkdir()
    async with open_store(f"sqlite:///{absolute}") as store:  # sqlite:////abs/path
        await store.append("s", _turn(1))
    assert absolute.exists()
    async with open_store("sqlite:///:memory:", busy_timeout=1) as store:
        await store.append("s", _turn(1))
        assert len(await store.load("s")) == 2
    for bad in ("sqlite://chat.db", "sqlite:///", "sqlite:///x.db?mode=ro", "sqlite:"):
        with pytest.raises(ConfigurationError, match="sqlite:///"):
            open_store(bad)


async def test_a_lease_is_held_across_stores_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as first, SQLiteStateStore(path) as second:
        async with first.lease("s", ttl=5, timeout=1):
            with pytest.raises(LeaseTimeoutError):
                async with second.lease("s", ttl=5, timeout=0.1):
                    pass
            async with second.lease("other", ttl=5, timeout=0.1):
                pass  # other sessions are free
        async with second.lease("s", ttl=5, timeout=1):
            pass  # released on exit


async def test_a_dead_holders_lease_runs_out(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, clock=clock) as store:
        # Taken through the backend and never renewed nor released: its holder "died".
        assert await store.backend.acquire_lease("s", "dead holder", 3)
        with pytest.raises(LeaseTimeoutError):
            async with store.lease("s", ttl=3, timeout=0.05):
                pass
        clock.advance(3)
        async with SQLiteStateStore(path, clock=clock) as other:
            async with other.lease("s", ttl=3, timeout=1):
                pass


async def test_the_backend_lease_is_held_by_one_token_at_a_time(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with SQLiteStateStore(tmp_path / "c.db", clock=clock) as store:
        backend = store.backend
        assert await backend.acquire_lease("s", "a", 10)
        assert not await backend.acquire_lease("s", "b", 10)
        assert not await backend.renew_lease("s", "b", 10)  # not b's to renew
        assert await backend.renew_lease("s", "a", 10)
        clock.advance(10)
        assert not await backend.renew_lease("s", "a", 10)  # ran out: no longer a's
        assert await backend.acquire_lease("s", "b", 10)
        assert not await backend.renew_lease("s", "a", 10)
        assert not await backend.release_lease("s", "a")  # a cannot give back b's lease
        assert await backend.release_lease("s", "b")
        assert not await backend.release_lease("s", "b")


def _leasing(
    path: Path, clock: FakeClock, *, wall: FakeClock | None = None, **options: Any
) -> BackendStore[bytes]:
    """The SQLite backend under a store core whose leases wait and renew on ``clock``, which a
    SQLiteStateStore is not given (its ``clock=`` is the file's wall clock: ``wall`` here, by
    default ``clock`` too)."""
    return BackendStore(SQLiteBackend(path, clock=wall or clock, **options), clock=clock)


async def test_a_holder_whose_lease_was_taken_meanwhile_is_cancelled(tmp_path: Path) -> None:
    clock, wall = FakeClock(), FakeClock(1_700_000_000.0)
    path = tmp_path / "chat.db"
    async with (
        _leasing(path, clock, wall=wall) as first,
        SQLiteStateStore(path, clock=wall) as second,
    ):
        with pytest.raises(LeaseLostError):
            async with first.lease("s", ttl=0.3, timeout=1):
                await clock.sleeping()  # the renewer waits for its first third of the ttl
                wall.advance(1)  # the first holder stalls past its ttl...
                async with second.lease("s", ttl=30, timeout=1):  # ...and another takes it
                    clock.advance(0.1)  # the first's renewal comes due and finds it taken
                    with anyio.fail_after(10):  # (a turn left to run on would fail here)
                        await anyio.sleep_forever()


async def test_conversations_are_indexed_in_the_file(tmp_path: Path) -> None:
    async with SQLiteStateStore(tmp_path / "c.db") as store:
        conversations = Conversations(store)
        first = await conversations.record("ada", "c1")
        await store.append(first, _turn(1))
        await conversations.record("ada", "c2")
        assert [c.conversation_id for c in await conversations.list("ada")] == ["c2", "c1"]
        assert (await conversations.erase("ada")).sessions == [first]  # c2 had no session
        assert await conversations.list("ada") == [] and await store.load(first) == []


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from chatstate import Message
    from chatstate.stores.sqlite import SQLiteStateStore

    async def main(path, name, turns):
        async with SQLiteStateStore(path) as store:
            for number in range(turns):
                turn = [Message(role="user", content=f"{name} {number}")]
                await store.append("shared", turn)
                await store.append("bounded", turn, max_messages=7, ttl=600)
                if number % 10 == 0:
                    await store.save(f"{name}-own", turn)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_two_processes_on_one_file_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    turns = 150
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), name, str(turns)], env=environment
        )
        for name in ("a", "b")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]

    async def check() -> None:
        async with SQLiteStateStore(path) as store:
            shared = [m.text for m in await store.load("shared")]
            assert len(shared) == 2 * turns
            for name in ("a", "b"):  # each process's turns all there, in its order
                assert [t for t in shared if t.startswith(name)] == [
                    f"{name} {n}" for n in range(turns)
                ]
            assert len(await store.load("bounded")) == 7
            assert [m.text for m in await store.load("a-own")] == ["a 140"]

    asyncio.run(check())
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (stored,) = raw.execute(
            "SELECT count(*) FROM chatstate_messages WHERE session_id = 'bounded'"
        ).fetchone()
        assert stored == 7  # trimmed rows are gone, not just hidden


def test_the_chat_command_remembers_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["chat", "--store", f"sqlite:///{tmp_path / 'chat.db'}", "--session", "me"]
    monkeypatch.setattr("sys.stdin", io.StringIO("My name is Alice\n"))
    assert main(command) == 0  # this process writes the file...
    assert "0 messages so far" in capsys.readouterr().out
    done = subprocess.run(  # ...and another reads it
        [sys.executable, "-m", "chatstate", *command],
        input="What's my name?\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "2 messages so far" in done.stdout and "Alice" in done.stdout


async def test_a_damaged_entry_is_skipped_by_a_load_and_raised_by_a_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as store:
        await store.append("s", _turn(1))
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE chatstate_messages SET entry = X'0100ff' WHERE seq = 0")
        assert [m.text for m in await store.load("s")] == ["answer 1"]
        assert store.corrupt_entries == 1
        with pytest.raises(CorruptEntryError):
            await store.snapshot("s")  # a copy (an export, a fork) never drops it silently


async def test_a_damaged_summary_is_raised_by_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as store:
        await store.append("s", _turn(1) + _turn(2))

        async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
            return 2, Message(role="system", content="summary")

        assert await store.compact("s", fold)
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE chatstate_sessions SET summary = X'0100ff'")
        assert (await store.load_with_summary("s"))[1] is None  # skipped, as on_corrupt says
        with pytest.raises(CorruptEntryError):
            await store.snapshot("s")
        assert await store.load_with_summary("s", limit=0) == ([], None)


async def test_a_lease_needs_a_ttl_and_a_failed_renewal_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "chat.db", FakeClock(1_700_000_000.0)
    async with _leasing(path, clock, busy_timeout=0.02) as store:
        with pytest.raises(ConfigurationError, match="ttl"):
            async with store.lease("s", ttl=None, timeout=1):  # type: ignore[arg-type]
                pass
        async with SQLiteStateStore(path, clock=clock) as other:
            async with store.lease("s", ttl=0.6, timeout=1):
                blocker = sqlite3.connect(path, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")
                await clock.sleeping()  # the renewer waits for its first third of the ttl
                clock.advance(0.2)  # the first renewal fails: the file is locked
                await clock.sleeping()  # ...and it waits to try again
                blocker.execute("ROLLBACK")
                blocker.close()
                for _ in range(3):  # past the first ttl: renewed since, so still ours
                    clock.advance(0.2)
                    await clock.sleeping()
                with pytest.raises(LeaseTimeoutError):
                    async with other.lease("s", ttl=1, timeout=0.05):
                        pass
    assert caplog.text.count("renewing the lease of session 's' failed") == 1


async def test_opening_a_file_another_process_is_writing_waits_for_it(tmp_path: Path) -> None:
    # Switching a new file to WAL needs the lock another process may hold (its own switch, or
    # its first write): SQLite answers "locked" at once there, without its busy handler.
    path = tmp_path / "chat.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("CREATE TABLE app (x)")
    blocker.execute("BEGIN IMMEDIATE")

    async def release() -> None:
        await asyncio.sleep(0.1)  # long after the store's thread has tried the file
        blocker.execute("COMMIT")

    releasing = asyncio.create_task(release())
    async with SQLiteStateStore(path, busy_timeout=5) as store:
        assert await store.append("s", _turn(1)) == 2
    await releasing
    blocker.close()


_FILE_OF_0_1_0 = Path(__file__).parent / "fixtures" / "sqlite-0.1.0.sql"


async def test_a_file_written_by_0_1_0_is_read_and_written_in_its_own_layout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.executescript(_FILE_OF_0_1_0.read_text())
        tables = sorted(raw.execute("SELECT type, name, sql FROM sqlite_master"))
    # 100 s after it was written: "expired" (ttl 10) has expired, "bounded" (a day) has not.
    clock = FakeClock(1_700_000_100.0)
    async with SQLiteStateStore(path, clock=clock) as store:
        assert [m.text for m in await store.load("plain")] == [
            "question 1",
            "answer 1",
            "question 2",
            "answer 2",
        ]
        for name in ("compressed", "zlib"):  # zstd and zlib entries
            assert [m.text for m in await store.load(name)] == [
                "question 1" + "." * 3000,
                "answer 1",
            ]
        assert [m.text for m in await store.load("bounded")] == [
            "answer 3",
            "question 4",
            "answer 4",
        ]
        ttl = await store.ttl("bounded")
        assert ttl is not None and ttl.total_seconds() == 86_400 - 100
        history, summary = await store.load_with_summary("summarised")
        assert summary == Message(role="system", content="summary of turn 1")
        assert [m.text for m in history] == ["question 2", "answer 2", "question 3", "answer 3"]
        assert await store.load("expired") == []
        asked, called, answered = await store.load("tools")
        assert asked.metadata == {"lang": "en"} and called.tool_calls[0].name == "weather"
        assert answered.role == "tool" and answered.tool_call_id == "c1"
        assert [c.conversation_id for c in await Conversations(store).list("ada")] == ["c1"]

        version = await store.version("plain")
        assert await store.append("plain", _turn(3), max_messages=5) == 5
        assert await store.version("plain") != version
        assert await store.append("bounded", _turn(5), max_messages=3) == 3
        assert [m.text for m in await store.load("bounded")] == [
            "answer 4",
            "question 5",
            "answer 5",
        ]

        async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
            assert summary is not None and summary.text == "summary of turn 1"
            return 2, Message(role="system", content="summary of turns 1 and 2")

        assert await store.compact("summarised", fold)  # by the numbers 0.1.0 gave them
        history, summary = await store.load_with_summary("summarised")
        assert summary is not None and summary.text == "summary of turns 1 and 2"
        assert [m.text for m in history] == ["question 3", "answer 3"]
        assert await store.delete("tools") and await store.load("tools") == []
        await store.save("new", _turn(9))
    with contextlib.closing(sqlite3.connect(path)) as raw:
        # The same tables (and three more, for the write ids, the gaps that pops and edits
        # leave and the sessions' metadata, which 0.1.0 leaves alone) and schema version, and
        # every session's rows exactly head..tail-1: what 0.1.0 itself reads.
        now = sorted(raw.execute("SELECT type, name, sql FROM sqlite_master"))
        added = {"chatstate_writes", "chatstate_gaps", "chatstate_session_meta"}
        assert [row for row in now if row[1] not in added] == tables
        assert added <= {row[1] for row in now}
        assert raw.execute("SELECT value FROM chatstate_meta").fetchall() == [(1,)]
        sessions = raw.execute("SELECT id, head, tail FROM chatstate_sessions ORDER BY id")
        layout = {session_id: (head, tail) for session_id, head, tail in sessions}
        assert layout == {
            "bounded": (7, 10),
            "compressed": (0, 2),
            "new": (0, 2),
            "plain": (1, 6),
            "summarised": (4, 6),
            "zlib": (0, 2),
        }  # "expired" swept by the first write, "tools" deleted
        for session_id, (head, tail) in layout.items():
            seqs = raw.execute(
                "SELECT seq FROM chatstate_messages WHERE session_id = ? ORDER BY seq",
                (session_id,),
            )
            assert [seq for (seq,) in seqs] == list(range(head, tail))
        assert raw.execute("SELECT count(*) FROM chatstate_messages").fetchone() == (
            sum(tail - head for head, tail in layout.values()),
        )
