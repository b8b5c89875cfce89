"""What the SQLite store does beyond the conformance suite: a file that survives restarts and is
shared by processes, its schema and indexes, its sweep, its leases, and how it fails."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chatstate import Message
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    LeaseTimeoutError,
    StateSaveError,
    StoreError,
    UnsupportedFormatError,
)
from chatstate.sessions import Conversations
from chatstate.stores.sqlite import SQLiteStateStore
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


async def test_the_background_sweep_runs(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with SQLiteStateStore(tmp_path / "c.db", clock=clock, sweep_interval=0.01) as store:
        await store.append("s", _turn(1), ttl=1)
        clock.advance(2)
        for _ in range(200):
            if store.expirations:
                break
            await asyncio.sleep(0.01)
        assert store.expirations == 1


async def test_a_locked_database_fails_the_append_whole_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, busy_timeout=0.3) as store:
        await store.append("s", _turn(1))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's write, holding the lock
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
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
        assert ticks >= 10  # the loop ran on while the store waited for the lock
        assert [m.text for m in await store.load("s")] == ["question 1", "answer 1"]


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
        holder = store.lease("s", ttl=3, timeout=1)
        await holder.__aenter__()  # taken and never released: its holder "died"
        clock.advance(3)
        async with SQLiteStateStore(path, clock=clock) as other:
            async with other.lease("s", ttl=3, timeout=1):
                pass


async def test_conversations_are_indexed_in_the_file(tmp_path: Path) -> None:
    async with SQLiteStateStore(tmp_path / "c.db") as store:
        conversations = Conversations(store)
        first = await conversations.record("ada", "c1")
        await store.append(first, _turn(1))
        await conversations.record("ada", "c2")
        assert [c.conversation_id for c in await conversations.list("ada")] == ["c2", "c1"]
        assert await conversations.erase("ada") == 2
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


def test_the_chat_command_remembers_across_processes(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'chat.db'}"

    def chat(line: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "chatstate", "chat", "--store", store, "--session", "me"],
            input=line,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    assert "0 messages so far" in chat("My name is Alice\n")
    out = chat("What's my name?\n")
    assert "2 messages so far" in out and "Alice" in out


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
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path, busy_timeout=0.02) as store:
        with pytest.raises(ConfigurationError, match="ttl"):
            async with store.lease("s", ttl=None, timeout=1):  # type: ignore[arg-type]
                pass
        async with SQLiteStateStore(path) as other:
            async with store.lease("s", ttl=0.6, timeout=1):
                blocker = sqlite3.connect(path, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")  # the first renewal (at 0.2 s) fails
                await asyncio.sleep(0.25)
                blocker.execute("ROLLBACK")
                blocker.close()
                await asyncio.sleep(0.6)  # past the first ttl: renewed since, so still ours
                with pytest.raises(LeaseTimeoutError):
                    async with other.lease("s", ttl=1, timeout=0.05):
                        pass
    assert "renewing the lease of session 's' failed" in caplog.text


async def test_opening_a_file_another_process_is_writing_waits_for_it(tmp_path: Path) -> None:
    # Switching a new file to WAL needs the lock another process may hold (its own switch, or
    # its first write): SQLite answers "locked" at once there, without its busy handler.
    path = tmp_path / "chat.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("CREATE TABLE app (x)")
    blocker.execute("BEGIN IMMEDIATE")

    async def release() -> None:
        await asyncio.sleep(0.3)
        blocker.execute("COMMIT")

    releasing = asyncio.create_task(release())
    async with SQLiteStateStore(path, busy_timeout=5) as store:
        assert await store.append("s", _turn(1)) == 2
    await releasing
    blocker.close()
