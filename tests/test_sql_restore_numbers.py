"""The SQL backends' replace with the entries' numbers (``numbers=``, what a restore, an import or
a fork gives to keep message ids) and the numbers of a snapshot: gaps between the numbers given,
a tail that never goes down, write ids and fences; SQLite's gaps row, PostgreSQL's round trips
and a layout 2 of revision 0 (replace without numbers) that opens and gets the new functions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chatstate.stores import Fenced, Page, SQLiteStateStore, Written
from chatstate.stores.postgres._schema import FUNCTIONS_REVISION, SCHEMA_VERSION

from .conftest import kinds, store_of_kind
from .postgres_wire import counting, old_layout, store

_ids = iter(range(1, 1 << 30))


def _wid() -> str:
    return f"{next(_ids):016x}"


@pytest.fixture(params=kinds("sqlite", "postgres"))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """The SQL kinds of conftest's ``backend``."""
    async with store_of_kind(request.param, request, tmp_path) as sql:
        yield sql.backend


async def _restore(
    backend: Any,
    session: str,
    entries: Sequence[bytes],
    numbers: Sequence[int] | None,
    *,
    overwrite: bool = True,
    write_id: str | None = None,
    fence: str | None = None,
    summary: bytes | None = None,
) -> Written | None:
    written: Written | None = await backend.replace(
        session,
        list(entries),
        summary=summary,
        ttl=None,
        overwrite=overwrite,
        write_id=write_id or _wid(),
        fence=fence,
        numbers=numbers,
    )
    return written


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


async def _numbered(backend: Any, session: str) -> list[tuple[int, bytes]]:
    page = await _page(backend, session)
    return list(zip(page.seqs(), page.entries, strict=True))


async def test_numbers_without_gaps(backend: Any) -> None:
    written = await _restore(backend, "s", [b"a", b"b", b"c"], [5, 6, 7], summary=b"sum")
    assert written is not None and (written.length, written.applied) == (3, True)
    page = await _page(backend, "s")
    assert (page.first_seq, page.numbers, page.length, page.summary) == (5, None, 3, b"sum")
    assert (await _append(backend, "s", b"d")).length == 4
    assert await _numbered(backend, "s") == [(5, b"a"), (6, b"b"), (7, b"c"), (8, b"d")]
    snapshot = await backend.snapshot("s")
    assert (snapshot.entries, snapshot.numbers) == ([b"a", b"b", b"c", b"d"], [5, 6, 7, 8])


async def test_numbers_with_gaps_count_by_entry(backend: Any) -> None:
    await _restore(backend, "s", [b"a", b"b", b"c", b"d"], [2, 5, 6, 9])
    page = await _page(backend, "s")
    assert (page.first_seq, page.numbers, page.length) == (2, [2, 5, 6, 9], 4)
    assert (await _page(backend, "s", 2)).numbers == [6, 9]
    ranged = await backend.read_range("s", before=6, after=None, limit=5, touch=None)
    assert (ranged.entries, ranged.numbers, ranged.length) == ([b"a", b"b"], [2, 5], 4)
    written = await _append(backend, "s", b"e", max_entries=3)
    assert (written.length, written.trimmed) == (3, True)
    assert await _numbered(backend, "s") == [(6, b"c"), (9, b"d"), (10, b"e")]
    census = await backend.census()
    assert (census.sessions, census.messages) == (1, 3)


async def test_over_a_session_with_a_higher_tail_numbers_go_on_after_it(backend: Any) -> None:
    await _append(backend, "s", *(str(n).encode() for n in range(20)))
    before = await _page(backend, "s")
    written = await _restore(backend, "s", [b"x", b"y"], [0, 3])
    assert written is not None and (written.length, written.version) == (2, before.version + 1)
    page = await _page(backend, "s")
    assert (page.numbers, page.length) == ([0, 3], 2)
    assert page.generation != before.generation
    # The numbers 4 to 19 were given once: never again.
    assert (await _append(backend, "s", b"z")).length == 3
    assert await _numbered(backend, "s") == [(0, b"x"), (3, b"y"), (20, b"z")]
    # A last number above the old tail moves it up; a compaction cuts by number across it all.
    await _restore(backend, "s", [b"p", b"q"], [30, 31])
    assert (await _append(backend, "s", b"r")).length == 3
    assert await _numbered(backend, "s") == [(30, b"p"), (31, b"q"), (32, b"r")]
    page = await _page(backend, "s")
    assert await backend.compact(
        "s", generation=page.generation, before_seq=32, summary=b"s", write_id=_wid()
    )
    assert await _numbered(backend, "s") == [(32, b"r")]


async def test_a_deleted_session_takes_the_numbers_as_given(backend: Any) -> None:
    await _append(backend, "s", *(str(n).encode() for n in range(10)))
    assert await backend.delete("s", write_id=_wid(), fence=None)
    await _restore(backend, "s", [b"a", b"b"], [1, 4], overwrite=False)
    await _append(backend, "s", b"c")
    assert await _numbered(backend, "s") == [(1, b"a"), (4, b"b"), (5, b"c")]


async def test_an_existing_session_without_overwrite_is_left_alone(backend: Any) -> None:
    await _append(backend, "s", b"a")
    assert await _restore(backend, "s", [b"x"], [7], overwrite=False) is None
    assert await _numbered(backend, "s") == [(0, b"a")]


async def test_snapshot_numbers_after_pops_edits_and_a_trim(backend: Any) -> None:
    await _append(backend, "s", *(str(n).encode() for n in range(7)), max_entries=6)  # 1..6
    await backend.edit("s", 3, None, truncate=False, version=None, write_id=_wid(), fence=None)
    await backend.edit("s", 4, b"F", truncate=False, version=None, write_id=_wid(), fence=None)
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    snapshot = await backend.snapshot("s")
    assert snapshot.numbers == [1, 2, 4, 5]
    assert snapshot.entries == [b"1", b"2", b"F", b"5"]
    # A copy under those numbers reads as the original does.
    await _restore(backend, "copy", snapshot.entries, snapshot.numbers)
    assert await _numbered(backend, "copy") == await _numbered(backend, "s")
    assert (await backend.snapshot("copy")).numbers == [1, 2, 4, 5]
    assert await backend.snapshot("none") is None


async def test_a_replayed_write_id_is_not_applied_again(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c")
    token = _wid()
    first = await _restore(backend, "s", [b"x", b"y"], [10, 12], write_id=token)
    assert first is not None and first.applied
    await _append(backend, "s", b"z")
    again = await _restore(backend, "s", [b"other"], [0], write_id=token)
    assert again == Written(3, first.version + 1, applied=False)
    assert await _numbered(backend, "s") == [(10, b"x"), (12, b"y"), (13, b"z")]
    # Not even over a session deleted meanwhile: its write ids outlive it.
    assert await backend.delete("s", write_id=_wid(), fence=None)
    assert await _restore(backend, "s", [b"x"], [10], write_id=token) == Written(
        0, 0, applied=False
    )
    assert await backend.snapshot("s") is None


async def test_a_fenced_replace_writes_nothing(backend: Any) -> None:
    await _append(backend, "s", b"a")
    assert await backend.acquire_lease("s", "holder", 30.0)
    with pytest.raises(Fenced):
        await _restore(backend, "s", [b"x"], [5], fence="someone-else")
    assert await _numbered(backend, "s") == [(0, b"a")]
    written = await _restore(backend, "s", [b"x"], [5], fence="holder")
    assert written is not None and written.applied
    assert await _numbered(backend, "s") == [(5, b"x")]


# -- SQLite: the gaps row, and what 0.1.0 sees ----------------------------------------------------


async def test_sqlite_keeps_a_gaps_row_only_for_gaps(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStateStore(path) as ours:
        await _restore(ours.backend, "plain", [b"a", b"b"], [4, 5])
        await _restore(ours.backend, "gapped", [b"a", b"b"], [4, 7])
        await _append(ours.backend, "higher", b"a", b"b", b"c", b"d", b"e")
        await _restore(ours.backend, "higher", [b"x"], [1])
    with contextlib.closing(sqlite3.connect(path)) as raw:
        rows = raw.execute("SELECT id, head, tail FROM chatstate_sessions ORDER BY id").fetchall()
        assert rows == [("gapped", 4, 8), ("higher", 1, 5), ("plain", 4, 6)]
        gaps = raw.execute("SELECT session_id, missing FROM chatstate_gaps ORDER BY 1").fetchall()
        assert gaps == [("gapped", 2), ("higher", 3)]
        # A session without gaps is one that 0.1.0 reads as it always did: head to tail - 1.
        assert raw.execute(
            "SELECT seq FROM chatstate_messages WHERE session_id = 'plain'"
        ).fetchall() == [(4,), (5,)]


# -- PostgreSQL: round trips, and a layout 2 made before replace took numbers ---------------------


@pytest.mark.postgres
async def test_one_round_trip_per_numbered_replace_and_snapshot(
    postgres_dsn: str, pg_schema: str
) -> None:
    connection = counting()
    async with store(postgres_dsn, pg_schema, connection_class=connection, max_size=1) as ours:
        backend = ours.backend
        await _restore(backend, "s", [b"a", b"b"], [3, 9])  # every statement once: prepared
        await backend.snapshot("s")
        for name, call in {
            "replace (numbers)": lambda: _restore(backend, "s", [b"a", b"b"], [3, 9]),
            "replace": lambda: _restore(backend, "s", [b"a"], None),
            "snapshot": lambda: backend.snapshot("s"),
        }.items():
            before = connection.writes
            await call()
            assert connection.writes - before == 1, name


@pytest.mark.postgres
async def test_a_layout_2_of_revision_0_gets_the_new_functions(
    postgres_dsn: str, pg_schema: str
) -> None:
    await old_layout(postgres_dsn, pg_schema, 2)
    raw = await asyncpg.connect(postgres_dsn)
    try:  # as this morning's layout 2 left it: replace of eight arguments, no revision row
        await raw.execute(
            f"SELECT * FROM {pg_schema}.append('s', $1, NULL, NULL, $2, NULL, NULL, 0)",
            [b"a", b"b", b"c"],
            _wid(),
        )
        await raw.execute(f"SELECT * FROM {pg_schema}.pop('s', 1, $1, NULL, NULL, 600)", _wid())
        await raw.execute(f"DROP FUNCTION {pg_schema}.replace")
        await raw.execute(
            f"CREATE FUNCTION {pg_schema}.replace(p_id text, p_entries bytea[], "
            "p_summary bytea, p_ttl float8, p_overwrite boolean, p_write text, p_fence text, "
            "p_now float8) RETURNS TABLE (length bigint, version bigint, applied boolean) "
            "LANGUAGE sql AS $$ SELECT 0::bigint, 0::bigint, false $$"
        )
        await raw.execute(f"DELETE FROM {pg_schema}.meta WHERE name = 'functions'")
    finally:
        await raw.close()
    async with store(postgres_dsn, pg_schema) as ours:
        backend = ours.backend
        assert await _numbered(backend, "s") == [(0, b"a"), (1, b"b")]
        await _restore(backend, "s", [b"x", b"y"], [0, 4])
        await _append(backend, "s", b"z")
        assert await _numbered(backend, "s") == [(0, b"x"), (4, b"y"), (5, b"z")]
    raw = await asyncpg.connect(postgres_dsn)
    try:
        meta = dict(await raw.fetch(f"SELECT name, value FROM {pg_schema}.meta"))
        assert meta == {"schema": SCHEMA_VERSION, "functions": FUNCTIONS_REVISION}
        count = (
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND p.proname = 'replace'"
        )
        assert await raw.fetchval(count, pg_schema) == 1  # the old form dropped, no overload
    finally:
        await raw.close()
