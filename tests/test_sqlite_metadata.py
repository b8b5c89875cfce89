"""The SQLite backend's session metadata (:class:`~chatstate.stores.Describing`): the metadata
entry and the created and updated times in ``chatstate_session_meta``, written with the history
in one transaction; write_meta with write ids and fences; expiry, deletes and emptying writes;
what 0.1.0 and earlier 0.2 builds wrote, and what 0.1.0's writes do to the rows; a crash in the
middle of an append with metadata; the conversation index's cursor."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatstate.stores import Fenced, Page, Written
from chatstate.stores._backend import Describing
from chatstate.stores.sqlite import SQLiteBackend

from .conftest import FakeClock

T0 = 1_700_000_000.0
_ids = iter(range(1, 1 << 30))
_FILE_OF_0_1_0 = Path(__file__).parent / "fixtures" / "sqlite-0.1.0.sql"


def _wid() -> str:
    return f"{next(_ids):016x}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def backend(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteBackend]:
    sqlite = SQLiteBackend(tmp_path / "chat.db", clock=clock)
    yield sqlite
    await sqlite.aclose()


async def _append(
    backend: SQLiteBackend,
    session: str,
    *entries: bytes,
    meta: bytes | None = None,
    ttl: float | None = None,
    write_id: str | None = None,
    fence: str | None = None,
) -> Written:
    return await backend.append(
        session,
        list(entries),
        max_entries=None,
        ttl=ttl,
        write_id=write_id or _wid(),
        fence=fence,
        meta=meta,
    )


async def _read(backend: SQLiteBackend, session: str, touch: float | None = None) -> Page[bytes]:
    return await backend.read(
        session, limit=None, summary=True, touch=touch, numbers=True, meta=True
    )


async def _about(backend: SQLiteBackend, session: str) -> tuple[bytes | None, float, float]:
    page = await _read(backend, session)
    return page.meta, page.created, page.updated


async def _replace(backend: SQLiteBackend, session: str, *entries: bytes, **meta: Any) -> Any:
    return await backend.replace(
        session,
        list(entries),
        summary=None,
        ttl=None,
        overwrite=True,
        write_id=_wid(),
        fence=None,
        **meta,
    )


def _rows(path: Path | str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        return raw.execute("SELECT * FROM chatstate_session_meta ORDER BY session_id").fetchall()


# -- round trips -----------------------------------------------------------------------------


async def test_it_is_describing_and_an_append_writes_its_metadata_with_its_entries(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    assert isinstance(backend, Describing)
    await _append(backend, "s", b"a", b"b", meta=b"title")
    page = await _read(backend, "s")
    assert (page.entries, page.meta, page.created, page.updated) == (
        [b"a", b"b"],
        b"title",
        T0,
        T0,
    )
    plain = await backend.read("s", limit=None, summary=False, touch=None, numbers=False)
    assert (plain.entries, plain.meta, plain.created, plain.updated) == ([b"a", b"b"], None, 0, 0)
    clock.advance(5)
    await _append(backend, "s", b"c")  # no meta: kept
    assert await _about(backend, "s") == (b"title", T0, T0 + 5)
    await _append(backend, "s", b"d", meta=b"renamed")
    assert await _about(backend, "s") == (b"renamed", T0, T0 + 5)
    snapshot = await backend.snapshot("s")
    assert snapshot is not None and snapshot.meta == b"renamed"
    await _append(backend, "plain", b"x")  # a session without metadata has its times
    assert await _about(backend, "plain") == (None, T0 + 5, T0 + 5)
    assert await _about(backend, "nobody") == (None, 0.0, 0.0)


async def test_replace_keeps_sets_or_removes_the_metadata_and_keeps_created(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    await _replace(backend, "s", b"a")  # new, KEEP: none
    assert await _about(backend, "s") == (None, T0, T0)
    clock.advance(1)
    await _replace(backend, "s", b"b", meta=b"m1")
    assert await _about(backend, "s") == (b"m1", T0, T0 + 1)
    clock.advance(1)
    await _replace(backend, "s", b"c")  # KEEP
    assert await _about(backend, "s") == (b"m1", T0, T0 + 2)
    await _replace(backend, "s", b"d", meta=None)
    assert await _about(backend, "s") == (None, T0, T0 + 2)
    await _replace(backend, "t", b"x", meta=b"new")  # a new session with metadata
    assert await _about(backend, "t") == (b"new", T0 + 2, T0 + 2)
    snapshot = await backend.snapshot("t")
    assert snapshot is not None and (snapshot.entries, snapshot.meta) == ([b"x"], b"new")


async def test_updated_moves_with_history_writes_only(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    await _append(backend, "s", b"a", b"b", b"c", b"d", b"e", meta=b"m")

    async def moved(step: Any) -> bool:
        """Whether ``step``, 10 s after the last, set updated to its time."""
        clock.advance(10)
        await step()
        meta, created, updated = await _about(backend, "s")
        assert (meta, created) == (b"m", T0)
        return updated == clock()

    assert await moved(lambda: _append(backend, "s", b"f"))
    assert await moved(
        lambda: backend.edit(
            "s", 1, b"B", truncate=False, version=None, write_id=_wid(), fence=None
        )
    )
    assert await moved(lambda: backend.pop("s", 1, write_id=_wid(), fence=None))
    generation = (await _read(backend, "s")).generation
    assert not await moved(
        lambda: backend.compact(
            "s", generation=generation, before_seq=2, summary=b"sum", write_id=_wid()
        )
    )
    assert (await _read(backend, "s")).summary == b"sum"
    assert not await moved(lambda: backend.write_meta("s", b"m", write_id=_wid(), fence=None))
    assert not await moved(lambda: _read(backend, "s", touch=60))
    assert (await _about(backend, "s"))[2] == T0 + 30  # the pop's
    assert await moved(lambda: _replace(backend, "s", b"z"))


# -- write_meta ------------------------------------------------------------------------------


async def test_write_meta_keeps_the_history_version_times_and_expiry(
    backend: SQLiteBackend, clock: FakeClock, tmp_path: Path
) -> None:
    assert await backend.write_meta("nobody", b"m", write_id=_wid(), fence=None) is None
    assert _rows(tmp_path / "chat.db") == []  # nothing written for a missing session
    await _append(backend, "s", b"a", b"b", ttl=100)
    before = await _read(backend, "s")
    clock.advance(30)
    written = await backend.write_meta("s", b"m", write_id="w1", fence=None)
    assert written == Written(2, before.version)
    after = await _read(backend, "s")
    assert (after.entries, after.version, after.generation) == (
        [b"a", b"b"],
        before.version,
        before.generation,
    )
    assert (after.meta, after.created, after.updated) == (b"m", T0, T0)
    assert await backend.time_left("s") == 70
    # A remembered write id changes nothing, whatever it carries now, fence or not.
    again = await backend.write_meta("s", None, write_id="w1", fence="not-the-lease")
    assert again == Written(2, before.version, applied=False)
    assert (await _read(backend, "s")).meta == b"m"
    assert await backend.write_meta("s", None, write_id=_wid(), fence=None) == Written(
        2, before.version
    )
    assert (await _read(backend, "s")).meta is None


async def test_write_meta_and_an_append_with_meta_are_fenced(backend: SQLiteBackend) -> None:
    await _append(backend, "s", b"a", meta=b"m")
    assert await backend.acquire_lease("s", "holder", 30)
    with pytest.raises(Fenced):
        await backend.write_meta("s", b"intruder", write_id=_wid(), fence="stale")
    with pytest.raises(Fenced):
        await _append(backend, "s", b"b", meta=b"intruder", fence="stale")
    page = await _read(backend, "s")
    assert (page.entries, page.meta) == ([b"a"], b"m")
    written = await backend.write_meta("s", b"held", write_id=_wid(), fence="holder")
    assert written is not None and written.applied
    assert (await _read(backend, "s")).meta == b"held"


# -- the row goes with the session -----------------------------------------------------------


async def test_metadata_expires_with_the_session_and_the_sweep_deletes_its_row(
    backend: SQLiteBackend, clock: FakeClock, tmp_path: Path
) -> None:
    await _append(backend, "short", b"a", meta=b"m", ttl=10)
    await _append(backend, "sliding", b"a", meta=b"m", ttl=10)
    clock.advance(8)
    await _read(backend, "sliding", touch=10)  # to T0 + 18
    clock.advance(4)  # T0 + 12
    assert await _read(backend, "short") == Page([], 0)  # never its metadata
    assert await backend.snapshot("short") is None
    assert await backend.write_meta("short", b"late", write_id=_wid(), fence=None) is None
    assert await _about(backend, "sliding") == (b"m", T0, T0)
    clock.advance(10)  # T0 + 22: both expired
    assert await backend.sweep() == 1  # "short" went with the write_meta that found it expired
    assert _rows(tmp_path / "chat.db") == []


async def test_delete_and_emptying_pops_and_edits_remove_the_metadata(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    for session in ("deleted", "popped", "edited", "kept"):
        await _append(backend, session, b"a", meta=session.encode())
    await backend.delete("deleted", write_id=_wid(), fence=None)
    await backend.pop("popped", 5, write_id=_wid(), fence=None)
    await backend.edit("edited", 0, None, truncate=True, version=None, write_id=_wid(), fence=None)
    assert [row[0] for row in _rows(tmp_path / "chat.db")] == ["kept"]
    await _append(backend, "deleted", b"again")  # made again: no metadata of the first
    assert (await _about(backend, "deleted"))[0] is None


async def test_compaction_keeps_the_metadata(backend: SQLiteBackend) -> None:
    await _append(backend, "s", b"a", b"b", b"c", meta=b"m")
    page = await _read(backend, "s")
    assert await backend.compact(
        "s", generation=page.generation, before_seq=2, summary=b"sum", write_id=_wid()
    )
    page = await _read(backend, "s")
    assert (page.entries, page.summary, page.meta) == ([b"c"], b"sum", b"m")


# -- faults ----------------------------------------------------------------------------------


async def test_a_failing_statement_rolls_back_the_whole_append_with_meta(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The metadata's statement fails (a trigger aborts it) after the entries were inserted and
    the session's row updated: nothing of the append stays, and its retry applies it once."""
    path = tmp_path / "chat.db"
    async with contextlib.AsyncExitStack() as stack:
        backend = SQLiteBackend(path, clock=clock)
        stack.push_async_callback(backend.aclose)
        await _append(backend, "s", b"a", meta=b"m")
        before = await _read(backend, "s")
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE ON chatstate_session_meta "
                "WHEN NEW.meta = X'626164' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            raw.commit()
        with pytest.raises(sqlite3.IntegrityError):
            await _append(backend, "s", b"b", meta=b"bad", write_id="w1")
        with pytest.raises(sqlite3.IntegrityError):
            await backend.write_meta("s", b"bad", write_id="w2", fence=None)
        after = await _read(backend, "s")
        assert (after.entries, after.meta, after.version) == ([b"a"], b"m", before.version)
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute("DROP TRIGGER refuse")
            raw.commit()
        for _ in range(2):
            await _append(backend, "s", b"b", meta=b"bad", write_id="w1")
        page = await _read(backend, "s")
        assert (page.entries, page.meta) == ([b"a", b"b"], b"bad")


_KILLED = """
import asyncio, sys, time
from chatstate.stores.sqlite import _store
from chatstate.stores.sqlite._schema import connect

def stalled(path, **options):
    connection = connect(path, **options)
    def trace(statement):
        if "chatstate_session_meta" in statement and "INSERT" in statement:
            print("inside", flush=True)  # the entries and the session's row are written
            time.sleep(60)
    connection.set_trace_callback(trace)
    return connection

_store.connect = stalled

async def main():
    backend = _store.SQLiteBackend(sys.argv[1])
    await backend.append(
        "s", [b"lost"], max_entries=None, ttl=None, write_id="killed-1", fence=None, meta=b"new"
    )

asyncio.run(main())
"""


async def test_a_process_killed_inside_an_append_with_meta_leaves_nothing_of_it(
    tmp_path: Path,
) -> None:
    """A real crash: another process, SIGKILLed inside its append's transaction (after the
    entries' insert and the session's update, at the metadata's statement). The file has
    every acknowledged write and nothing of the killed one; its retry applies it once."""
    path = tmp_path / "chat.db"
    backend = SQLiteBackend(path)
    try:
        await _append(backend, "s", b"acknowledged", meta=b"old", write_id="ack-1")
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_KILLED), str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"inside\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            child.stdout.close()  # type: ignore[union-attr]
        page = await _read(backend, "s")
        assert (page.entries, page.meta) == ([b"acknowledged"], b"old")
        for write_id in ("killed-1", "killed-1", "ack-1"):  # the retry, twice; an old replay
            await backend.append(
                "s",
                [b"lost"],
                max_entries=None,
                ttl=None,
                write_id=write_id,
                fence=None,
                meta=b"new",
            )
        page = await _read(backend, "s")
        assert (page.entries, page.meta) == ([b"acknowledged", b"lost"], b"new")
    finally:
        await backend.aclose()


# -- earlier layouts and releases ------------------------------------------------------------


async def test_a_file_of_0_1_0_reads_without_metadata_and_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.executescript(_FILE_OF_0_1_0.read_text())
    clock = FakeClock(1_700_000_100.0)
    async with contextlib.AsyncExitStack() as stack:
        backend = SQLiteBackend(path, clock=clock)
        stack.push_async_callback(backend.aclose)
        page = await _read(backend, "plain")
        assert (len(page.entries), page.meta, page.created, page.updated) == (4, None, 0, 0)
        await _append(backend, "plain", b"x")  # updated known from now on, created never
        assert await _about(backend, "plain") == (None, 0.0, clock())
        written = await backend.write_meta("bounded", b"m", write_id=_wid(), fence=None)
        assert written is not None and written.length == 3
        assert await _about(backend, "bounded") == (b"m", 0.0, 0.0)
        await _replace(backend, "zlib", b"y", meta=b"z")
        assert await _about(backend, "zlib") == (b"z", 0.0, clock())
        snapshot = await backend.snapshot("summarised")
        assert snapshot is not None and snapshot.meta is None


async def test_a_file_of_an_earlier_0_2_build_gains_the_table(tmp_path: Path) -> None:
    """A file that a 0.2 build without metadata wrote: its sessions, gaps and write ids, and no
    chatstate_session_meta."""
    path = tmp_path / "chat.db"
    async with contextlib.AsyncExitStack() as stack:
        backend = SQLiteBackend(path)
        stack.push_async_callback(backend.aclose)
        await _append(backend, "s", b"a", b"b", b"c", write_id="early")
        await backend.edit("s", 1, None, truncate=False, version=None, write_id=_wid(), fence=None)
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("DROP TABLE chatstate_session_meta")
    async with contextlib.AsyncExitStack() as stack:
        backend = SQLiteBackend(path)
        stack.push_async_callback(backend.aclose)
        page = await _read(backend, "s")
        assert (page.entries, page.numbers, page.meta, page.created) == (
            [b"a", b"c"],
            [0, 2],
            None,
            0.0,
        )
        assert (await _append(backend, "s", b"c", write_id="early")).applied is False
        await backend.write_meta("s", b"m", write_id=_wid(), fence=None)
        assert (await _read(backend, "s")).meta == b"m"


async def test_what_0_1_0_does_to_a_session_with_metadata(tmp_path: Path) -> None:
    """0.1.0's statements, as it runs them, on a file of ours: it inserts a session's row by
    position, so the tables it knows must keep their columns; its appends, saves and
    compactions keep the session's metadata; a session it makes again after a delete or an
    expiry does not read as having the metadata left under its id."""
    path = tmp_path / "chat.db"
    clock = FakeClock(T0)
    async with contextlib.AsyncExitStack() as stack:
        backend = SQLiteBackend(path, clock=clock)
        stack.push_async_callback(backend.aclose)
        await _append(backend, "s", b"a", meta=b"m")
        await _append(backend, "t", b"a", meta=b"m")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        # 0.1.0's append, then its save (generation + 1), then its compaction (+ 1).
        raw.execute("INSERT INTO chatstate_messages VALUES ('s', 1, X'62')")
        raw.execute("UPDATE chatstate_sessions SET tail = 2, version = version + 1 WHERE id = 's'")
        row = raw.execute("SELECT version, generation FROM chatstate_sessions WHERE id = 's'")
        version, generation = row.fetchone()
        raw.execute("DELETE FROM chatstate_messages WHERE session_id = 's'")
        raw.execute("INSERT INTO chatstate_messages VALUES ('s', 0, X'78')")
        raw.execute(
            "INSERT OR REPLACE INTO chatstate_sessions VALUES ('s', 0, 1, NULL, ?, ?, NULL)",
            (version + 1, generation + 1),
        )
        raw.execute(
            "UPDATE chatstate_sessions SET version = version + 1, generation = generation + 1 "
            "WHERE id = 's'"
        )
        # 0.1.0's delete of "t", and an append that makes it again (a random generation).
        raw.execute("DELETE FROM chatstate_messages WHERE session_id = 't'")
        raw.execute("DELETE FROM chatstate_sessions WHERE id = 't'")
        raw.execute("INSERT INTO chatstate_messages VALUES ('t', 0, X'6e')")
        raw.execute(
            "INSERT INTO chatstate_sessions VALUES ('t', 0, 1, NULL, 5, 123456789012345, NULL)"
        )
    clock.advance(10)
    async with contextlib.AsyncExitStack() as stack:
        backend = SQLiteBackend(path, clock=clock)
        stack.push_async_callback(backend.aclose)
        assert await _about(backend, "s") == (b"m", T0, T0)  # its writes do not move updated
        assert (await _read(backend, "s")).entries == [b"x"]
        assert await _about(backend, "t") == (None, 0.0, 0.0)  # not the first "t"'s
        assert (await backend.snapshot("t")).meta is None  # type: ignore[union-attr]
        await _append(backend, "t", b"o")  # started again from here: created unknown
        assert await _about(backend, "t") == (None, 0.0, T0 + 10)
        await _append(backend, "s", b"y")
        assert await _about(backend, "s") == (b"m", T0, T0 + 10)


# -- the conversation index ------------------------------------------------------------------


async def test_the_index_lists_newest_first_ties_by_member_descending_and_pages_by_cursor(
    backend: SQLiteBackend,
) -> None:
    members = ["b", "a", "c", "\x1fsession:x", "\x1f", "é", "z z"]
    for index, member in enumerate(members):
        # Three instants, several members at each.
        await backend.index_conversation("u", member, now=100.0 + index % 3, ttl=None)
    everything = await backend.list_conversations("u", now=200.0, offset=0, limit=100)
    expected = sorted(
        ((member, 100.0 + index % 3) for index, member in enumerate(members)),
        key=lambda pair: (pair[1], pair[0]),
        reverse=True,
    )
    assert everything == expected
    assert {member for member, _ in everything} == set(members)  # stored as given
    pages: list[tuple[str, float]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await backend.list_conversations("u", now=200.0, offset=0, limit=2, after=after)
        if not page:
            break
        pages += page
        after = (page[-1][1], page[-1][0])
    assert pages == expected
    assert await backend.list_conversations("u", now=200.0, offset=2, limit=2) == expected[2:4]
    assert await backend.list_conversations(
        "u", now=200.0, offset=0, limit=10, after=(101.0, "\x1f")
    ) == [pair for pair in expected if (pair[1], pair[0]) < (101.0, "\x1f")]
