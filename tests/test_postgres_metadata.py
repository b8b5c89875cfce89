"""The PostgreSQL backend's session metadata (layout 3): the metadata entry with an append, a
replace (KEEP, set, None) and write_meta; the created and updated times; expiry, deletion and
compaction; the index's cursor and its order; one round trip per call; the layouts 1 and 2 of
earlier versions upgraded in place; and a stalled server under write_meta and an append with
metadata (nothing acknowledged lost or doubled)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from chatstate.stores import KEEP, Fenced, Page, RawSession, Written
from chatstate.stores.postgres import PostgresBackend
from chatstate.stores.postgres._schema import SCHEMA_VERSION

from .postgres_wire import counting, hold_the_session_row, old_layout, store

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0


class Clock:
    """The store's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _wid() -> str:
    return secrets.token_hex(8)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def backend(postgres_dsn: str, pg_schema: str, clock: Clock) -> AsyncIterator[Any]:
    async with store(postgres_dsn, pg_schema, clock=clock) as ours:
        yield ours.backend


async def _append(
    backend: Any, session: str, *entries: bytes, meta: bytes | None = None, **options: Any
) -> Written:
    written: Written = await backend.append(
        session,
        list(entries),
        max_entries=options.pop("max_entries", None),
        ttl=options.pop("ttl", None),
        write_id=options.pop("write_id", None) or _wid(),
        fence=options.pop("fence", None),
        meta=meta,
    )
    return written


async def _read(backend: Any, session: str, **options: Any) -> Page[bytes]:
    settings = {"limit": None, "summary": False, "touch": None, "numbers": True, "meta": True}
    page: Page[bytes] = await backend.read(session, **{**settings, **options})
    return page


async def _described(backend: Any, session: str) -> tuple[bytes | None, float, float]:
    page = await _read(backend, session)
    return page.meta, page.created, page.updated


async def _replace(backend: Any, session: str, *entries: bytes, **options: Any) -> Written | None:
    written: Written | None = await backend.replace(
        session,
        list(entries),
        summary=None,
        ttl=options.pop("ttl", None),
        overwrite=True,
        write_id=_wid(),
        fence=None,
        **options,
    )
    return written


# -- the metadata with the history's writes ------------------------------------------------------


async def test_an_append_writes_the_metadata_with_the_entries(backend: Any) -> None:
    written = await _append(backend, "s", b"a", b"b", meta=b"title")
    assert (written.length, written.applied) == (2, True)
    page = await _read(backend, "s")
    assert (page.entries, page.meta, page.created, page.updated) == ([b"a", b"b"], b"title", T0, T0)
    plain = await backend.read("s", limit=None, summary=False, touch=None, numbers=False)
    assert plain.entries == [b"a", b"b"] and plain.meta is None  # the plain load reads none
    snapshot = await backend.snapshot("s")
    assert snapshot == RawSession([b"a", b"b"], None, None, [0, 1], b"title")
    await _append(backend, "s", b"c")  # without meta: kept
    assert (await _read(backend, "s")).meta == b"title"
    await _append(backend, "s", b"d", meta=b"renamed")
    assert (await _read(backend, "s")).meta == b"renamed"


async def test_an_append_with_metadata_is_one_step(backend: Any) -> None:
    await _append(backend, "s", b"a", meta=b"one", write_id="aaaaaaaaaaaaaaaa")
    # A remembered write id: neither the entries nor the metadata again.
    again = await _append(backend, "s", b"a", meta=b"two", write_id="aaaaaaaaaaaaaaaa")
    assert not again.applied
    assert await backend.acquire_lease("s", "holder", 30.0)
    with pytest.raises(Fenced):  # refused: neither is written
        await _append(backend, "s", b"b", meta=b"three", fence="stale")
    page = await _read(backend, "s")
    assert (page.entries, page.meta) == ([b"a"], b"one")


async def test_a_batch_of_appends_carries_each_ones_metadata(backend: Any) -> None:
    async def append(session: str, meta: bytes | None) -> None:
        await _append(backend, session, b"x", meta=meta)

    await _append(backend, "kept", b"x", meta=b"old")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(append, f"s{n}", f"m{n}".encode())
            group.start_soon(append, "kept", None)
            group.start_soon(append, "new", None)
    assert backend.batcher.batches >= 1
    for n in range(8):
        assert (await _read(backend, f"s{n}")).meta == f"m{n}".encode()
    assert (await _read(backend, "kept")).meta == b"old"
    assert (await _read(backend, "new")).meta is None


async def test_a_replace_keeps_sets_or_removes_the_metadata(backend: Any, clock: Clock) -> None:
    await _append(backend, "s", b"a", meta=b"title")
    clock.now += 5
    await _replace(backend, "s", b"b")  # KEEP, the default
    assert await _described(backend, "s") == (b"title", T0, T0 + 5)
    await _replace(backend, "s", b"c", meta=KEEP)
    assert (await _read(backend, "s")).meta == b"title"
    await _replace(backend, "s", b"d", meta=b"other")
    assert (await _read(backend, "s")).meta == b"other"
    clock.now += 5
    await _replace(backend, "s", b"e", meta=None)
    assert await _described(backend, "s") == (None, T0, T0 + 10)
    # A new session: created now; KEEP keeps nothing.
    await _replace(backend, "new", b"a")
    assert await _described(backend, "new") == (None, T0 + 10, T0 + 10)
    await _replace(backend, "new2", b"a", meta=b"given")
    assert (await backend.snapshot("new2")).meta == b"given"


# -- write_meta ----------------------------------------------------------------------------------


async def test_write_meta_sets_and_removes_and_keeps_the_rest(backend: Any, clock: Clock) -> None:
    assert await backend.write_meta("s", b"x", write_id=_wid(), fence=None) is None
    await _append(backend, "s", b"a", b"b", ttl=100.0)
    before = await _read(backend, "s")
    clock.now += 5
    written = await backend.write_meta("s", b"title", write_id=_wid(), fence=None)
    assert written == Written(2, before.version, applied=True)
    after = await _read(backend, "s")
    assert (after.meta, after.created, after.updated) == (b"title", T0, T0)  # times kept
    assert (after.version, after.generation) == (before.version, before.generation)
    assert await backend.time_left("s") == pytest.approx(95.0)  # the expiry kept
    await backend.write_meta("s", None, write_id=_wid(), fence=None)
    assert (await _read(backend, "s")).meta is None


async def test_write_meta_write_ids_and_fence(backend: Any) -> None:
    # No session: nothing written, not even the write id.
    assert await backend.write_meta("s", b"x", write_id="bbbbbbbbbbbbbbbb", fence=None) is None
    await _append(backend, "s", b"a")
    first = await backend.write_meta("s", b"one", write_id="bbbbbbbbbbbbbbbb", fence=None)
    assert first is not None and first.applied
    again = await backend.write_meta("s", b"two", write_id="bbbbbbbbbbbbbbbb", fence=None)
    assert again == Written(1, first.version, applied=False)
    assert (await _read(backend, "s")).meta == b"one"
    assert await backend.acquire_lease("s", "holder", 30.0)
    with pytest.raises(Fenced):
        await backend.write_meta("s", b"three", write_id=_wid(), fence="stale")
    # The write id is checked before the fence: applied while the lease was held.
    repeat = await backend.write_meta("s", b"two", write_id="bbbbbbbbbbbbbbbb", fence="stale")
    assert repeat is not None and not repeat.applied
    held = await backend.write_meta("s", b"four", write_id=_wid(), fence="holder")
    assert held is not None and held.applied
    assert (await _read(backend, "s")).meta == b"four"


# -- times ---------------------------------------------------------------------------------------


async def test_updated_moves_with_the_history_alone(backend: Any, clock: Clock) -> None:
    async def times() -> tuple[float, float]:
        page = await _read(backend, "s")
        return page.created, page.updated

    await _append(backend, "s", b"a", b"b", b"c", b"d", ttl=1_000.0)
    clock.now += 1
    await _append(backend, "s", b"e", ttl=1_000.0)
    assert await times() == (T0, T0 + 1)
    clock.now += 1
    await backend.edit("s", 1, b"B", truncate=False, version=None, write_id=_wid(), fence=None)
    assert await times() == (T0, T0 + 2)
    clock.now += 1
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    assert await times() == (T0, T0 + 3)
    clock.now += 1
    page = await _read(backend, "s")
    assert await backend.compact(
        "s", generation=page.generation, before_seq=2, summary=b"sum", write_id=_wid()
    )
    await backend.write_meta("s", b"m", write_id=_wid(), fence=None)
    await _read(backend, "s", touch=500.0)
    await backend.read_range("s", before=None, after=None, limit=2, touch=500.0)
    assert await times() == (T0, T0 + 3)  # neither a compaction, a metadata write nor a read
    clock.now += 1
    await _replace(backend, "s", b"x", ttl=1_000.0)
    assert await times() == (T0, T0 + 5)
    page = await _read(backend, "s")
    assert (page.meta, page.summary) == (b"m", None)


async def test_the_times_are_the_servers_without_a_clock(postgres_dsn: str, pg_schema: str) -> None:
    async with store(postgres_dsn, pg_schema) as ours:
        backend = ours.backend
        server = await backend._run(lambda c: c.fetchval("SELECT extract(epoch FROM now())"))
        await _append(backend, "s", b"a")
        first = await _read(backend, "s")
        await anyio.sleep(0.05)
        await backend.write_meta("s", b"m", write_id=_wid(), fence=None)
        await _append(backend, "s", b"b")
        second = await _read(backend, "s")
        assert float(server) <= first.created == first.updated < second.updated
        assert second.created == first.created
        assert second.updated - first.updated >= 0.05


# -- expiry and removal --------------------------------------------------------------------------


async def test_the_metadata_expires_with_the_session(backend: Any, clock: Clock) -> None:
    await _append(backend, "s", b"a", meta=b"title", ttl=10.0)
    await _append(backend, "slid", b"a", meta=b"title", ttl=10.0)
    clock.now += 8
    await _read(backend, "slid", touch=10.0)  # a sliding expiry: the metadata with it
    await backend.read_range("slid", before=None, after=None, limit=1, touch=10.0)
    clock.now += 4
    assert await _read(backend, "s") == Page([], 0)
    assert await backend.write_meta("s", b"late", write_id=_wid(), fence=None) is None
    assert await _described(backend, "slid") == (b"title", T0, T0)
    await _append(backend, "s", b"b", ttl=10.0)  # a new session: no metadata of the old one
    assert await _described(backend, "s") == (None, T0 + 12, T0 + 12)
    await _replace(backend, "s", b"c", ttl=10.0, meta=b"again")
    clock.now += 11
    await _replace(backend, "s", b"d")  # KEEP over an expired session keeps nothing
    assert (await _read(backend, "s")).meta is None
    clock.now += 100
    await backend.sweep()
    raw = await backend._run(
        lambda c: c.fetchval(
            f"SELECT count(*) FROM {backend.schema}.sessions WHERE meta IS NOT NULL"
        )
    )
    assert raw == 0  # swept with their rows


@pytest.mark.parametrize("how", ["delete", "pop", "edit", "truncate"])
async def test_the_metadata_goes_with_a_session_emptied(
    backend: Any, clock: Clock, how: str
) -> None:
    await _append(backend, "s", b"a", b"b", meta=b"title")
    if how == "delete":
        assert await backend.delete("s", write_id=_wid(), fence=None)
    elif how == "pop":
        await backend.pop("s", 2, write_id=_wid(), fence=None)
    elif how == "edit":  # each entry removed in turn
        for seq in (1, 0):
            await backend.edit(
                "s", seq, None, truncate=False, version=None, write_id=_wid(), fence=None
            )
    else:  # the first entry removed, and every one after it
        await backend.edit("s", 0, None, truncate=True, version=None, write_id=_wid(), fence=None)
    assert await _read(backend, "s") == Page([], 0)
    assert await backend.snapshot("s") is None
    assert await backend.write_meta("s", b"late", write_id=_wid(), fence=None) is None
    clock.now += 1
    await _append(backend, "s", b"c")
    assert await _described(backend, "s") == (None, T0 + 1, T0 + 1)


async def test_a_compaction_keeps_the_metadata(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", meta=b"title")
    page = await _read(backend, "s")
    assert await backend.compact(
        "s", generation=page.generation, before_seq=2, summary=b"sum", write_id=_wid()
    )
    page = await _read(backend, "s", summary=True)
    assert (page.entries, page.summary, page.meta) == ([b"c"], b"sum", b"title")


# -- the conversation index ----------------------------------------------------------------------

_MEMBERS = ["b", "a", "B", "\x1fs1", "\x1fs0", "é", "a b", "_x", "z"]


async def _index(backend: Any, user: str, members: list[str], times: list[float]) -> None:
    for member, when in zip(members, times, strict=True):
        await backend.index_conversation(user, member, now=when, ttl=None)


async def _pages(backend: Any, user: str, size: int) -> list[tuple[str, float]]:
    """Every member, a page of ``size`` at a time from the cursor of the last."""
    listed: list[tuple[str, float]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await backend.list_conversations(user, now=T0, offset=0, limit=size, after=after)
        listed += page
        if len(page) < size:
            return listed
        after = (page[-1][1], page[-1][0])


async def test_the_listing_orders_ties_by_member_descending_and_pages_by_cursor(
    backend: Any,
) -> None:
    # Three last-active times, several members on each: ties broken by the member, descending,
    # in code point order (as Python and Redis compare them), whatever the database's collation.
    times = [T0 - (n % 3) for n in range(len(_MEMBERS))]
    await _index(backend, "u", _MEMBERS, times)
    expected = sorted(zip(_MEMBERS, times, strict=True), key=lambda p: (p[1], p[0]), reverse=True)
    listed = await backend.list_conversations("u", now=T0, offset=0, limit=100)
    assert listed == expected
    assert await backend.list_conversations("u", now=T0, offset=2, limit=3) == expected[2:5]
    for size in (1, 2, 4):
        assert await _pages(backend, "u", size) == expected
    member, when = expected[3]
    after = await backend.list_conversations("u", now=T0, offset=0, limit=100, after=(when, member))
    assert after == expected[4:]
    # A cursor whose member is gone still places the page.
    gone = await backend.list_conversations("u", now=T0, offset=0, limit=100, after=(T0, "c"))
    assert gone == [pair for pair in expected if (pair[1], pair[0]) < (T0, "c")]
    assert set(await backend.drop_conversations("u")) == set(_MEMBERS)


async def test_expired_members_are_never_listed_after_a_cursor(backend: Any) -> None:
    await backend.index_conversation("u", "old", now=T0 - 50, ttl=10.0)
    await backend.index_conversation("u", "\x1fnew", now=T0 - 1, ttl=100.0)
    await backend.index_conversation("u", "other", now=T0 - 1, ttl=None)
    listed = await backend.list_conversations("u", now=T0, offset=0, limit=10, after=(T0, ""))
    assert listed == [("other", T0 - 1), ("\x1fnew", T0 - 1)]


async def test_the_order_holds_in_a_database_of_another_collation(postgres_admin: str) -> None:
    admin = await asyncpg.connect(postgres_admin)
    name = f"chatstate_test_icu_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
            "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    except asyncpg.PostgresError as exc:  # a server built without ICU
        await admin.close()
        pytest.skip(f"no ICU collation: {exc}")
    try:
        dsn = postgres_admin.rsplit("/", 1)[0] + f"/{name}"
        async with store(dsn, "chatstate") as ours:
            backend = ours.backend
            # In en-US, "a b" < "_x" < "a" < "B" < "b" ...: not the code point order.
            await _index(backend, "u", _MEMBERS, [T0] * len(_MEMBERS))
            expected = sorted(_MEMBERS, reverse=True)
            listed = await backend.list_conversations("u", now=T0, offset=0, limit=100)
            assert [member for member, _ in listed] == expected
            paged = await _pages(backend, "u", 2)
            assert [member for member, _ in paged] == expected
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


# -- round trips ---------------------------------------------------------------------------------


async def test_one_round_trip_per_call_with_metadata(postgres_dsn: str, pg_schema: str) -> None:
    connection = counting()
    async with store(postgres_dsn, pg_schema, connection_class=connection, max_size=1) as ours:
        backend = ours.backend
        await _append(backend, "s", b"a", b"b")
        await backend.index_conversation("u", "c", now=T0, ttl=None)

        def calls() -> dict[str, Any]:
            return {
                "append (meta)": lambda: _append(backend, "s", b"x", meta=b"m"),
                "append": lambda: _append(backend, "s", b"y"),
                "read (meta)": lambda: _read(backend, "s"),
                "read (meta, touch)": lambda: _read(backend, "s", touch=60.0),
                "write_meta": lambda: backend.write_meta("s", b"n", write_id=_wid(), fence=None),
                "replace (meta)": lambda: _replace(backend, "s", b"z", meta=b"o"),
                "replace (keep)": lambda: _replace(backend, "s", b"z"),
                "snapshot": lambda: backend.snapshot("s"),
                "list (after)": lambda: backend.list_conversations(
                    "u", now=T0, offset=0, limit=5, after=(T0 + 1, "")
                ),
            }

        for call in calls().values():  # every statement once, so that each is prepared
            await call()
        for name, call in calls().items():
            before = connection.writes
            await call()
            assert connection.writes - before == 1, name


# -- the layouts of earlier versions -------------------------------------------------------------


@pytest.mark.parametrize("layout", [1, 2])
async def test_a_schema_of_an_earlier_layout_is_upgraded_in_place(
    postgres_dsn: str, pg_schema: str, layout: int
) -> None:
    await old_layout(postgres_dsn, pg_schema, layout)
    raw = await asyncpg.connect(postgres_dsn)
    try:  # written by that version's own functions
        append = f"SELECT * FROM {pg_schema}.append($1, $2, NULL, $3, $4, NULL, $5, 0)"
        await raw.execute(append, "s", [b"a", b"b"], None, _wid(), T0 - 100)
        await raw.execute(append, "gone", [b"a"], None, _wid(), T0 - 100)
        await raw.execute(f"SELECT {pg_schema}.delete('gone', $1, NULL, $2, 600)", _wid(), T0)
        await raw.execute(append, "brief", [b"a"], 10.0, _wid(), T0 - 100)  # expired
        index = f"INSERT INTO {pg_schema}.conversations VALUES ('u', $1, $2, NULL)"
        for member, when in (("a", T0 - 2), ("c", T0 - 1), ("b", T0 - 1)):
            await raw.execute(index, member, when)
    finally:
        await raw.close()
    clock = Clock()
    async with store(postgres_dsn, pg_schema, clock=clock) as ours:
        backend: PostgresBackend = ours.backend
        page = await _read(backend, "s")
        assert (page.entries, page.meta, page.created, page.updated) == ([b"a", b"b"], None, 0, 0)
        assert await _read(backend, "gone") == Page([], 0)
        assert await _read(backend, "brief") == Page([], 0)
        await _append(backend, "s", b"c")
        assert await _described(backend, "s") == (None, 0.0, T0)  # created: still not known
        assert await backend.write_meta("s", b"title", write_id=_wid(), fence=None)
        assert await _described(backend, "s") == (b"title", 0.0, T0)
        await _append(backend, "gone", b"x", meta=b"new")
        assert await _described(backend, "gone") == (b"new", T0, T0)
        await _append(backend, "brief", b"x")
        assert await _described(backend, "brief") == (None, T0, T0)
        listed = await backend.list_conversations("u", now=T0, offset=0, limit=10)
        assert listed == [("c", T0 - 1), ("b", T0 - 1), ("a", T0 - 2)]
        cursor = await backend.list_conversations(
            "u", now=T0, offset=0, limit=10, after=(T0 - 1, "c")
        )
        assert cursor == listed[1:]
        # A store of the earlier layout still running calls the old forms: they are the new
        # functions' without metadata (written none, the session's kept).
        old_append = f"SELECT * FROM {pg_schema}.append('s', $1, NULL, NULL, $2, NULL, $3, 0)"
        old_replace = (
            f"SELECT * FROM {pg_schema}.replace('s', $1, NULL, NULL, true, $2, NULL, $3, NULL)"
        )
        await backend._run(lambda c: c.execute(old_append, [b"d"], _wid(), T0 + 1))
        assert await _described(backend, "s") == (b"title", 0.0, T0 + 1)
        await backend._run(lambda c: c.execute(old_replace, [b"e"], _wid(), T0 + 2))
        page = await _read(backend, "s")
        assert (page.entries, page.meta, page.updated) == ([b"e"], b"title", T0 + 2)
    raw = await asyncpg.connect(postgres_dsn)
    try:
        meta = dict(await raw.fetch(f"SELECT name, value FROM {pg_schema}.meta"))
        assert meta["schema"] == SCHEMA_VERSION == 3
        overloads = (
            "SELECT p.proname, count(*) FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = $1 GROUP BY p.proname HAVING count(*) > 1"
        )
        assert await raw.fetch(overloads, pg_schema) == []  # the old forms dropped
        index = "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = $2"
        assert await raw.fetchval(index, pg_schema, "conversations_recent") == 1
    finally:
        await raw.close()


async def test_two_stores_upgrading_one_schema_at_once(postgres_dsn: str, pg_schema: str) -> None:
    await old_layout(postgres_dsn, pg_schema, 2)

    async def open_and_write(n: int) -> None:
        async with store(postgres_dsn, pg_schema) as ours:
            await _append(ours.backend, f"s{n}", b"a", meta=f"m{n}".encode())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for n in range(4):
                group.start_soon(open_and_write, n)
    async with store(postgres_dsn, pg_schema) as ours:
        for n in range(4):
            assert (await _read(ours.backend, f"s{n}")).meta == f"m{n}".encode()


# -- faults --------------------------------------------------------------------------------------


async def _written_ids(dsn: str, schema: str, write_id: str) -> int:
    """How many times ``write_id`` is among session s's remembered write ids."""
    raw = await asyncpg.connect(dsn)
    try:
        ids: str = await raw.fetchval(f"SELECT ids FROM {schema}.sessions WHERE id = 's'")
    finally:
        await raw.close()
    return ids.split("\n").count(write_id)


@pytest.mark.parametrize("write", ["write_meta", "append"])
async def test_a_stalled_server_then_the_retry_writes_the_metadata_once(
    postgres_dsn: str, pg_schema: str, write: str
) -> None:
    # The client gives a call 1 s; the session's row is held for 3 s (slow machines: a margin).
    async with store(postgres_dsn, pg_schema, command_timeout=1.0) as ours:
        backend = ours.backend
        await _append(backend, "s", b"before", meta=b"old")
        version = (await _read(backend, "s")).version

        async def call() -> Written | None:
            if write == "append":
                return await _append(
                    backend, "s", b"turn", meta=b"new", write_id="cccccccccccccccc"
                )
            written: Written | None = await backend.write_meta(
                "s", b"new", write_id="cccccccccccccccc", fence=None
            )
            return written

        held = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(hold_the_session_row, postgres_dsn, pg_schema, 3.0, held)
            await held.wait()
            with pytest.raises(TimeoutError):  # sent, no answer: the outcome is unknown
                await call()
            assert (await _read(backend, "s")).meta == b"old"  # reads never wait
        for _ in range(2):  # the retry, twice: applied once
            written = await call()
            assert written is not None
        page = await _read(backend, "s")
        entries = [b"before", b"turn"] if write == "append" else [b"before"]
        assert (page.entries, page.meta) == (entries, b"new")
        assert page.version == version + (write == "append")
        assert await _written_ids(postgres_dsn, pg_schema, "cccccccccccccccc") == 1


async def test_an_append_with_metadata_cancelled_by_the_server_writes_neither(
    postgres_dsn: str, pg_schema: str
) -> None:
    settings = {"statement_timeout": "200"}
    async with store(postgres_dsn, pg_schema, server_settings=settings) as ours:
        backend = ours.backend
        await _append(backend, "s", b"before", meta=b"old")
        blocker = await asyncpg.connect(postgres_dsn)
        try:  # the append's second entry collides with a row not yet committed: it waits
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(f"INSERT INTO {pg_schema}.messages VALUES ('s', 2, 'x')")
            with pytest.raises(asyncpg.QueryCanceledError):
                await _append(
                    backend, "s", b"one", b"two", meta=b"new", write_id="dddddddddddddddd"
                )
            await transaction.rollback()
        finally:
            await blocker.close()
        page = await _read(backend, "s")
        assert (page.entries, page.meta) == ([b"before"], b"old")  # rolled back as a whole
        await _append(backend, "s", b"one", b"two", meta=b"new", write_id="dddddddddddddddd")
        page = await _read(backend, "s")
        assert (page.entries, page.meta) == ([b"before", b"one", b"two"], b"new")
