"""The SQL backends' numbers: never given twice in a session's life (pops, edits, truncations and
saves leave gaps), lengths and bounds by count across gaps, compaction and pages by number, and
edits by number with write ids, fences and a version check; SQLite files of 0.1.0, PostgreSQL's
round trips and its migration from layout 1."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chatstate.stores import Fenced, Page, SQLiteStateStore, Written
from chatstate.stores._backend import Editing
from chatstate.stores.postgres import SCHEMA_VERSION, PostgresBackend
from chatstate.stores.sqlite import SQLiteBackend

from .conftest import FakeClock, kinds, store_of_kind
from .postgres_wire import counting, old_layout, store

_ids = iter(range(1, 1 << 30))


def _wid() -> str:
    return f"{next(_ids):016x}"


@pytest.fixture(params=kinds("sqlite", "postgres"))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """The SQL kinds of conftest's ``backend``."""
    async with store_of_kind(request.param, request, tmp_path) as sql:
        yield sql.backend


async def _append(
    backend: Any, session: str, *entries: bytes, max_entries: int | None = None
) -> Written:
    written: Written = await backend.append(
        session, list(entries), max_entries=max_entries, ttl=None, write_id=_wid(), fence=None
    )
    return written


async def _page(backend: Any, session: str, limit: int | None = None) -> Page[bytes]:
    page: Page[bytes] = await backend.read(
        session, limit=limit, summary=True, touch=None, numbers=True
    )
    return page


async def _numbered(
    backend: Any, session: str, limit: int | None = None
) -> list[tuple[int, bytes]]:
    page = await _page(backend, session, limit)
    return list(zip(page.seqs(), page.entries, strict=True))


async def _edit(
    backend: Any,
    session: str,
    seq: int,
    entry: bytes | None,
    *,
    truncate: bool = False,
    version: int | None = None,
    write_id: str | None = None,
    fence: str | None = None,
) -> Written | str:
    result: Written | str = await backend.edit(
        session,
        seq,
        entry,
        truncate=truncate,
        version=version,
        write_id=write_id or _wid(),
        fence=fence,
    )
    return result


async def test_both_backends_offer_the_history_operations(tmp_path: Path) -> None:
    sqlite = SQLiteBackend(tmp_path / "unused.db")
    postgres = PostgresBackend(
        None, dsn="postgresql://localhost/unused", schema="unused", clock=None, sweep_interval=None
    )
    # Typed as the protocol: mypy checks that both satisfy it (neither connects here).
    backends: list[Editing[bytes]] = [sqlite, postgres]
    for backend in backends:
        assert callable(backend.read_range) and callable(backend.edit)
    await sqlite.aclose()


async def test_a_pop_leaves_its_numbers_unused(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", b"d")
    before = await _page(backend, "s")
    popped = await backend.pop("s", 2, write_id=_wid(), fence=None)
    assert (popped.entries, popped.length) == ([b"c", b"d"], 2)
    after = await _page(backend, "s")
    assert after.generation != before.generation and after.version == before.version + 1
    written = await _append(backend, "s", b"e")
    assert (written.length, written.version) == (3, before.version + 2)
    assert await _numbered(backend, "s") == [(0, b"a"), (1, b"b"), (4, b"e")]
    page = await _page(backend, "s")
    assert (page.first_seq, page.numbers, page.length) == (0, [0, 1, 4], 3)
    assert await _numbered(backend, "s", limit=2) == [(1, b"b"), (4, b"e")]
    limited = await _page(backend, "s", limit=0)
    assert (limited.entries, limited.length) == ([], 3)


async def test_a_pop_keeps_the_expiry(backend: Any) -> None:
    await backend.append(
        "s", [b"a", b"b"], max_entries=None, ttl=100.0, write_id=_wid(), fence=None
    )
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    left = await backend.time_left("s")
    assert left is not False and left is not None and 90 < left <= 100


async def test_edits_and_truncations_leave_gaps_and_appends_number_on(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", b"d", b"e")
    version = (await _page(backend, "s")).version
    removed = await _edit(backend, "s", 1, None)
    assert removed == Written(4, version + 1)
    replaced = await _edit(backend, "s", 3, b"D", truncate=True)
    assert replaced == Written(3, version + 2)
    assert await _numbered(backend, "s") == [(0, b"a"), (2, b"c"), (3, b"D")]
    assert (await _append(backend, "s", b"f", b"g")).length == 5
    assert await _numbered(backend, "s") == [
        (0, b"a"), (2, b"c"), (3, b"D"), (5, b"f"), (6, b"g")
    ]  # fmt: skip
    # A removal with truncate removes the entry itself and everything after it.
    assert await _edit(backend, "s", 5, None, truncate=True) == Written(3, version + 4)
    assert await _numbered(backend, "s") == [(0, b"a"), (2, b"c"), (3, b"D")]
    assert (await _append(backend, "s", b"h")).length == 4
    assert (await _numbered(backend, "s"))[-1] == (7, b"h")


async def test_an_edit_keeps_the_summary_and_the_expiry_and_changes_the_generation(
    backend: Any,
) -> None:
    await backend.append(
        "s", [b"a", b"b"], max_entries=None, ttl=100.0, write_id=_wid(), fence=None
    )
    page = await _page(backend, "s")
    assert await backend.compact(
        "s", generation=page.generation, before_seq=1, summary=b"sum", write_id=_wid()
    )
    page = await _page(backend, "s")
    assert await _edit(backend, "s", 1, b"B") == Written(1, page.version + 1)
    after = await _page(backend, "s")
    assert (after.entries, after.summary, after.first_seq) == ([b"B"], b"sum", 1)
    assert after.generation != page.generation
    left = await backend.time_left("s")
    assert left is not False and left is not None and 90 < left <= 100


async def test_a_save_numbers_on_after_every_number_given(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c")
    await backend.pop("s", 1, write_id=_wid(), fence=None)  # 2 is never given again
    written = await backend.replace(
        "s", [b"x", b"y"], summary=None, ttl=None, overwrite=True, write_id=_wid(), fence=None
    )
    assert written is not None and written.length == 2
    assert await _numbered(backend, "s") == [(3, b"x"), (4, b"y")]
    assert (await _page(backend, "s")).numbers is None  # no gaps from 3 on
    # A new session (and one deleted) numbers from 0.
    await backend.replace(
        "t", [b"x"], summary=None, ttl=None, overwrite=False, write_id=_wid(), fence=None
    )
    assert await _numbered(backend, "t") == [(0, b"x")]
    assert await backend.delete("s", write_id=_wid(), fence=None)
    await _append(backend, "s", b"z")
    assert await _numbered(backend, "s") == [(0, b"z")]


async def test_the_bound_trims_by_count_across_gaps(backend: Any) -> None:
    await _append(backend, "s", b"0", b"1", b"2", b"3", b"4")
    await _edit(backend, "s", 1, None)
    await _edit(backend, "s", 3, None)  # 0, 2, 4
    written = await _append(backend, "s", b"5", max_entries=4)
    assert (written.length, written.trimmed) == (4, False)
    written = await _append(backend, "s", b"6", max_entries=3)
    assert (written.length, written.trimmed) == (3, True)
    assert await _numbered(backend, "s") == [(4, b"4"), (5, b"5"), (6, b"6")]
    assert (await _page(backend, "s")).length == 3
    # More entries than the bound at once: only the newest are written.
    await _edit(backend, "s", 5, None)
    written = await _append(backend, "s", b"7", b"8", b"9", max_entries=2)
    assert (written.length, written.trimmed) == (2, True)
    assert await _numbered(backend, "s") == [(8, b"8"), (9, b"9")]
    page = await _page(backend, "s")
    assert (page.length, page.numbers, page.first_seq) == (2, None, 8)  # no gaps left


async def test_compaction_cuts_by_number_across_gaps(backend: Any) -> None:
    await _append(backend, "s", *(str(n).encode() for n in range(6)))
    await _edit(backend, "s", 2, None)
    await _edit(backend, "s", 4, None)  # 0, 1, 3, 5
    page = await _page(backend, "s")
    # The fold covers 0 and 1: the cut falls on the missing 2.
    assert await backend.compact(
        "s", generation=page.generation, before_seq=2, summary=b"sum", write_id=_wid()
    )
    after = await _page(backend, "s")
    assert (after.entries, after.numbers, after.length, after.summary) == (
        [b"3", b"5"],
        [3, 5],
        2,
        b"sum",
    )
    assert (await _append(backend, "s", b"6")).length == 3
    assert await _numbered(backend, "s") == [(3, b"3"), (5, b"5"), (6, b"6")]
    page = await _page(backend, "s")
    assert await backend.compact(
        "s", generation=page.generation, before_seq=6, summary=b"sum2", write_id=_wid()
    )
    after = await _page(backend, "s")
    assert (after.entries, after.numbers, after.first_seq, after.length) == ([b"6"], None, 6, 1)


async def test_pages_by_number_across_gaps(backend: Any) -> None:
    await _append(backend, "s", *(str(n).encode() for n in range(10)))
    for seq in (3, 4, 7):
        await _edit(backend, "s", seq, None)  # 0 1 2 5 6 8 9
    version = (await _page(backend, "s")).version

    async def numbers(**where: Any) -> tuple[list[int], Page[bytes]]:
        page: Page[bytes] = await backend.read_range(
            "s", **{"before": None, "after": None, "touch": None, **where}
        )
        assert [int(entry) for entry in page.entries] == page.seqs()
        return page.seqs(), page

    newest, page = await numbers(limit=3)
    assert newest == [6, 8, 9] and page.numbers == [6, 8, 9]
    assert (page.version, page.length, page.summary) == (version, 7, None)
    assert (await numbers(before=6, limit=3))[0] == [1, 2, 5]
    assert (await numbers(before=1, limit=3))[0] == [0]
    assert (await numbers(after=2, limit=2))[0] == [5, 6]
    contiguous, page = await numbers(after=4, limit=2)
    assert contiguous == [5, 6] and page.first_seq == 5
    assert (await numbers(after=-1, limit=100))[0] == [0, 1, 2, 5, 6, 8, 9]
    empty, page = await numbers(after=9, limit=5)
    assert empty == [] and (page.version, page.length) == (version, 7)
    assert (await numbers(before=0, limit=5))[0] == []
    unknown = await backend.read_range("none", before=None, after=None, limit=3, touch=None)
    assert (unknown.entries, unknown.version) == ([], 0)
    # A sliding expiry, set by the read itself.
    await backend.read_range("s", before=None, after=None, limit=1, touch=50.0)
    left = await backend.time_left("s")
    assert left is not False and left is not None and 40 < left <= 50


async def test_an_edit_conditional_on_the_version(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b")
    version = (await _page(backend, "s")).version
    assert await _edit(backend, "s", 0, b"A", version=version - 1) == "stale"
    assert await _edit(backend, "s", 0, b"A", version=version) == Written(2, version + 1)
    assert await _edit(backend, "s", 1, None, version=version) == "stale"
    assert await _numbered(backend, "s") == [(0, b"A"), (1, b"b")]
    assert await _edit(backend, "s", 7, b"x") == "missing"
    assert await _edit(backend, "s", -1, None) == "missing"
    assert await _edit(backend, "none", 0, b"x") == "missing"
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    assert await _edit(backend, "s", 1, b"x", version=version + 2) == "missing"
    assert (await _page(backend, "s")).version == version + 2  # nothing changed


async def test_a_replayed_edit_is_not_applied_again(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c")
    token = _wid()
    first = await _edit(backend, "s", 1, None, write_id=token)
    assert isinstance(first, Written) and first.applied and first.length == 2
    again = await _edit(backend, "s", 0, b"other", truncate=True, version=1, write_id=token)
    assert again == Written(2, first.version, applied=False)
    assert await _numbered(backend, "s") == [(0, b"a"), (2, b"c")]


async def test_an_edit_that_empties_the_session_deletes_it_and_keeps_its_write_ids(
    backend: Any,
) -> None:
    await _append(backend, "s", b"a", b"b")
    token = _wid()
    assert await _edit(backend, "s", 0, None, truncate=True, write_id=token) == Written(0, 0)
    assert await backend.time_left("s") is False
    assert (await _page(backend, "s")).version == 0
    assert await _edit(backend, "s", 0, None, write_id=token) == Written(0, 0, applied=False)
    await _append(backend, "s", b"new")
    assert await _numbered(backend, "s") == [(0, b"new")]  # a deleted session numbers anew


async def test_a_fenced_edit_changes_nothing(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b")
    assert await backend.acquire_lease("s", "holder", 30.0)
    with pytest.raises(Fenced):
        await _edit(backend, "s", 0, b"x", fence="someone-else")
    with pytest.raises(Fenced):
        await _edit(backend, "s", 0, None, truncate=True, fence="someone-else")
    assert await _numbered(backend, "s") == [(0, b"a"), (1, b"b")]
    version = (await _page(backend, "s")).version
    assert await _edit(backend, "s", 0, b"x", fence="holder") == Written(2, version + 1)


async def test_a_replayed_append_after_a_pop_reports_the_length_by_count(backend: Any) -> None:
    token = _wid()
    await backend.append(
        "s", [b"a", b"b", b"c"], max_entries=None, ttl=None, write_id=token, fence=None
    )
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    again = await backend.append(
        "s", [b"a"], max_entries=None, ttl=None, write_id=token, fence=None
    )
    assert (again.length, again.applied) == (2, False)


async def test_the_census_counts_entries_not_numbers(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", b"d")
    await _edit(backend, "s", 1, None)
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    census = await backend.census()
    assert (census.sessions, census.messages) == (1, 2)


# -- SQLite: files of 0.1.0 ----------------------------------------------------------------------

_FILE_OF_0_1_0 = Path(__file__).parent / "fixtures" / "sqlite-0.1.0.sql"


async def test_a_file_of_0_1_0_takes_pops_and_edits(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.executescript(_FILE_OF_0_1_0.read_text())
    async with SQLiteStateStore(path, clock=FakeClock(1_700_000_100.0)) as ours:
        backend = ours.backend
        before = await _page(backend, "plain")
        assert (before.first_seq, before.length, before.numbers) == (0, 4, None)
        await backend.pop("plain", 1, write_id=_wid(), fence=None)
        await _edit(backend, "plain", 1, None)
        await _append(backend, "plain", b"new")
        assert [seq for seq, _ in await _numbered(backend, "plain")] == [0, 2, 4]
        assert (await _page(backend, "plain")).length == 3
        # "bounded" (5..7, as 0.1.0 left it) keeps its numbers and trims by count.
        await _edit(backend, "bounded", 6, None)
        written = await _append(backend, "bounded", b"x", b"y", max_entries=3)
        assert (written.length, written.trimmed) == (3, True)
        assert [seq for seq, _ in await _numbered(backend, "bounded")] == [7, 8, 9]
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT value FROM chatstate_meta").fetchall() == [(1,)]
        gaps = raw.execute("SELECT session_id, missing FROM chatstate_gaps").fetchall()
        assert gaps == [("plain", 2)]  # "bounded" has none left: its row went


async def test_a_session_that_0_1_0_wrote_after_its_gaps_is_counted_again(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as ours:
        await _append(ours.backend, "s", b"a", b"b", b"c", b"d")
        await _edit(ours.backend, "s", 1, None)  # 0, 2, 3: one missing
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        # What 0.1.0's append does: the next number, the tail and the version; no gaps row.
        raw.execute("INSERT INTO chatstate_messages VALUES ('s', 4, X'65')")
        raw.execute("UPDATE chatstate_sessions SET tail = 5, version = version + 1")
    async with SQLiteStateStore(path) as ours:
        page = await _page(ours.backend, "s")
        assert (page.length, page.numbers) == (4, [0, 2, 3, 4])
        assert (await _append(ours.backend, "s", b"f", max_entries=3)).length == 3
        assert [seq for seq, _ in await _numbered(ours.backend, "s")] == [3, 4, 5]
        await _edit(ours.backend, "s", 4, None)  # a gap again: a gaps row that will go stale
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        # What 0.1.0's save does: every entry again from 0, the version up; no gaps row.
        raw.execute("DELETE FROM chatstate_messages")
        raw.execute("INSERT INTO chatstate_messages VALUES ('s', 0, X'78')")
        raw.execute("UPDATE chatstate_sessions SET head = 0, tail = 1, version = version + 1")
    async with SQLiteStateStore(path) as ours:
        page = await _page(ours.backend, "s")
        assert (page.length, page.numbers, page.entries) == (1, None, [b"x"])


async def test_a_session_without_gaps_has_no_gaps_row(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as ours:
        await _append(ours.backend, "s", b"a", b"b", b"c", max_entries=2)
        await ours.backend.pop("s", 1, write_id=_wid(), fence=None)
        await ours.backend.replace(
            "s", [b"x"], summary=None, ttl=None, overwrite=True, write_id=_wid(), fence=None
        )
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT count(*) FROM chatstate_gaps").fetchone() == (0,)
        assert raw.execute("SELECT head, tail FROM chatstate_sessions").fetchall() == [(3, 4)]


# -- PostgreSQL: round trips, and the migration from layout 1 -------------------------------------


@pytest.mark.postgres
async def test_one_round_trip_per_history_call(postgres_dsn: str, pg_schema: str) -> None:
    connection = counting()
    async with store(postgres_dsn, pg_schema, connection_class=connection, max_size=1) as ours:
        backend = ours.backend
        await _append(backend, "s", *(str(n).encode() for n in range(20)))
        await _edit(backend, "s", 3, None)  # gaps, so that reads take their gapped path

        def calls() -> dict[str, Any]:
            return {
                "pop": lambda: backend.pop("s", 1, write_id=_wid(), fence=None),
                "edit": lambda: _edit(backend, "s", 5, b"x", version=None),
                "edit (remove, truncate)": lambda: _edit(backend, "s", 17, None, truncate=True),
                "append (gaps, bounded)": lambda: _append(backend, "s", b"a", max_entries=15),
                "read (gaps, limit)": lambda: _page(backend, "s", 4),
                "read (gaps, touch)": lambda: backend.read(
                    "s", limit=3, summary=False, touch=60.0, numbers=True
                ),
                "read_range (before)": lambda: backend.read_range(
                    "s", before=10, after=None, limit=3, touch=None
                ),
                "read_range (after)": lambda: backend.read_range(
                    "s", before=None, after=2, limit=3, touch=None
                ),
                "read_range (newest, touch)": lambda: backend.read_range(
                    "s", before=None, after=None, limit=3, touch=60.0
                ),
                "read_range (after, touch)": lambda: backend.read_range(
                    "s", before=None, after=2, limit=3, touch=60.0
                ),
            }

        for call in calls().values():  # every statement once, so that each is prepared
            await call()
        for name, call in calls().items():
            before = connection.writes
            await call()
            assert connection.writes - before == 1, name


@pytest.mark.postgres
async def test_a_schema_of_layout_1_is_migrated(postgres_dsn: str, pg_schema: str) -> None:
    # Layout 1: no count of missing numbers, no pop or edit (numbers were reused after a pop).
    await old_layout(postgres_dsn, pg_schema, 1)
    raw = await asyncpg.connect(postgres_dsn)
    try:  # its own append, of eight arguments
        await raw.execute(
            f"SELECT * FROM {pg_schema}.append('s', $1, NULL, NULL, $2, NULL, NULL, 0)",
            [b"a", b"b", b"c"],
            _wid(),
        )
    finally:
        await raw.close()
    async with store(postgres_dsn, pg_schema) as ours:
        backend = ours.backend
        await backend.pop("s", 1, write_id=_wid(), fence=None)
        await _append(backend, "s", b"d")
        assert await _numbered(backend, "s") == [(0, b"a"), (1, b"b"), (3, b"d")]
        assert (await _page(backend, "s")).length == 3
    raw = await asyncpg.connect(postgres_dsn)
    try:
        version = f"SELECT value FROM {pg_schema}.meta WHERE name = 'schema'"
        assert await raw.fetchval(version) == SCHEMA_VERSION == 3
    finally:
        await raw.close()
