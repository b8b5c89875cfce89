"""The Redis backend's sequence numbers: never given twice in a session's life. Pops, edits and
saves leave gaps (kept in the meta hash, or beside it when long), trims and folds drop those
below the new head, and ``read_range`` and ``edit`` find entries by number across them (on
fakeredis and on a real server; what only a real server shows is in
test_redis_numbering_servers.py, a model of the numbers in test_redis_numbering_model.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatstate import RedisStateStore
from chatstate.errors import InvalidInputError
from chatstate.stores import Fenced, Written
from chatstate.stores.redis._backend import RedisBackend
from chatstate.stores.redis._numbering import NUMBERS_BELOW, parse_gaps

from .conftest import kinds, store_of_kind


def _wid() -> str:
    return uuid.uuid4().hex[:16]


@pytest.fixture(params=kinds("fakeredis", "redis"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with store_of_kind(request.param, request, tmp_path) as store:
        yield store


@pytest.fixture
def client(store: RedisStateStore) -> Any:
    return store.client


@pytest.fixture
def backend(store: RedisStateStore) -> RedisBackend:
    return store.backend


async def _append(
    backend: RedisBackend, *entries: bytes, keep: int | None = None, session: str = "s"
) -> Written:
    return await backend.append(
        session, list(entries), max_entries=keep, ttl=None, write_id=_wid(), fence=None
    )


async def _edit(
    backend: RedisBackend,
    seq: int,
    entry: bytes | None = None,
    *,
    truncate: bool = False,
    version: int | None = None,
    session: str = "s",
    write_id: str | None = None,
    fence: str | None = None,
) -> Any:
    return await backend.edit(
        session,
        seq,
        entry,
        truncate=truncate,
        version=version,
        write_id=write_id or _wid(),
        fence=fence,
    )


async def _numbered(backend: RedisBackend, session: str = "s") -> list[tuple[int, bytes]]:
    page = await backend.read(session, limit=None, summary=False, touch=None, numbers=True)
    return list(zip(page.seqs(), page.entries, strict=True))


async def _gaps(client: Any, backend: RedisBackend, session: str = "s") -> bytes | None:
    gaps: bytes | None = await client.hget(backend.key(session, "meta"), "h")
    return gaps


async def _version(backend: RedisBackend, session: str = "s") -> int:
    page = await backend.read(session, limit=0, summary=False, touch=None, numbers=True)
    return page.version


def _entries(count: int) -> list[bytes]:
    return [f"e{index}".encode() for index in range(count)]


# -- gaps ---------------------------------------------------------------------------------------


async def test_a_pop_leaves_its_numbers_unused(client: Any, backend: RedisBackend) -> None:
    await _append(backend, *_entries(4))  # 0-3
    before = await backend.read("s", limit=0, summary=False, touch=None, numbers=True)
    popped = await backend.pop("s", 2, write_id=_wid(), fence=None)
    assert popped.entries == [b"e2", b"e3"] and popped.version == before.version + 1
    assert await _gaps(client, backend) == b"2:2"  # 2-3, up to the tail
    await _append(backend, b"e4")
    assert await _numbered(backend) == [(0, b"e0"), (1, b"e1"), (4, b"e4")]
    await backend.pop("s", 1, write_id=_wid(), fence=None)  # 4 joins 2-3
    assert await _gaps(client, backend) == b"2:3"
    await _append(backend, b"e5")
    assert await _numbered(backend) == [(0, b"e0"), (1, b"e1"), (5, b"e5")]
    after = await backend.read("s", limit=2, summary=False, touch=None, numbers=True)
    assert (after.first_seq, after.numbers, after.length) == (1, [1, 5], 3)
    assert after.generation != before.generation
    newest = await backend.read("s", limit=1, summary=False, touch=None, numbers=True)
    assert (newest.first_seq, newest.numbers) == (5, None)  # one entry runs on from itself


async def test_edits_remove_anywhere_and_number_nothing_again(
    client: Any, backend: RedisBackend
) -> None:
    await _append(backend, *_entries(6))  # 0-5
    assert await _edit(backend, 2) == Written(5, await _version(backend))
    assert await _edit(backend, 3) == Written(4, await _version(backend))  # 2-3 one gap
    assert await _gaps(client, backend) == b"2:2"
    assert await _edit(backend, 0) == Written(3, await _version(backend))  # the head: 1 now
    assert await _numbered(backend) == [(1, b"e1"), (4, b"e4"), (5, b"e5")]
    assert await _edit(backend, 1) == Written(2, await _version(backend))  # 2-3 below the head
    assert await _gaps(client, backend) is None
    assert await _numbered(backend) == [(4, b"e4"), (5, b"e5")]
    await _edit(backend, 5)  # the newest: a gap up to the tail
    await _append(backend, b"e6")
    assert await _numbered(backend) == [(4, b"e4"), (6, b"e6")]
    replaced = await _edit(backend, 6, b"E6")
    assert replaced == Written(2, await _version(backend))
    assert await _numbered(backend) == [(4, b"e4"), (6, b"E6")]


async def test_an_edit_keeps_the_expiry_and_summary_and_changes_the_generation(
    client: Any, backend: RedisBackend
) -> None:
    await backend.append("s", _entries(3), max_entries=None, ttl=60, write_id=_wid(), fence=None)
    page = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    assert await backend.compact(
        "s", generation=page.generation, before_seq=1, summary=b"sum", write_id=_wid()
    )
    page = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    written = await _edit(backend, 2, b"E2")
    assert written == Written(2, page.version + 1)
    after = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    assert (after.entries, after.summary, after.first_seq) == ([b"e1", b"E2"], b"sum", 1)
    assert after.generation != page.generation
    for kind in ("messages", "summary", "meta"):
        assert 0 < await client.pttl(backend.key("s", kind)) <= 60_000


async def test_a_truncation_frees_every_number_after_the_entry(
    client: Any, backend: RedisBackend
) -> None:
    await _append(backend, *_entries(6))  # 0-5
    await _edit(backend, 2)  # 0 1 _ 3 4 5
    assert await _edit(backend, 3, b"E3", truncate=True) == Written(3, await _version(backend))
    assert await _numbered(backend) == [(0, b"e0"), (1, b"e1"), (3, b"E3")]
    assert await _gaps(client, backend) == b"2:1,1:2"  # 2, and 4-5 (1 after 3) up to the tail
    await _append(backend, b"e6")
    assert await _edit(backend, 1, truncate=True) == Written(1, await _version(backend))
    assert await _numbered(backend) == [(0, b"e0")]
    assert await _gaps(client, backend) == b"1:6"  # 1-6: the 2 below 3 merged in
    await _append(backend, b"e7")
    assert await _numbered(backend) == [(0, b"e0"), (7, b"e7")]
    # Removing the head with everything after it leaves nothing: the session is deleted.
    assert await _edit(backend, 0, truncate=True) == Written(0, 0)
    assert await backend.time_left("s") is False
    await _append(backend, b"new")
    assert await _numbered(backend) == [(0, b"new")]  # a deleted session numbers from 0


async def test_trims_drop_the_gaps_below_the_new_head(client: Any, backend: RedisBackend) -> None:
    await _append(backend, *_entries(6))  # 0-5
    await _edit(backend, 1)
    await _edit(backend, 3)  # 0 2 4 5
    await _append(backend, b"e6", keep=4)  # 2 4 5 6: the gap at 1 went with 0
    assert await _numbered(backend) == [(2, b"e2"), (4, b"e4"), (5, b"e5"), (6, b"e6")]
    assert await _gaps(client, backend) == b"3:1"
    await _append(backend, b"e7", b"e8", keep=3)  # 6 7 8
    assert await _numbered(backend) == [(6, b"e6"), (7, b"e7"), (8, b"e8")]
    assert await _gaps(client, backend) is None


async def test_a_fold_counts_by_number_across_gaps(client: Any, backend: RedisBackend) -> None:
    await _append(backend, *_entries(7))  # 0-6
    await _edit(backend, 1)
    await _edit(backend, 3)  # 0 2 4 5 6
    page = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    assert page.seqs() == [0, 2, 4, 5, 6]
    await _append(backend, b"e7", keep=5)  # a turn meanwhile trims 0: 2 4 5 6 7
    # Folds 0-4: of them only 2 and 4 are left.
    assert await backend.compact(
        "s", generation=page.generation, before_seq=5, summary=b"sum", write_id=_wid()
    )
    assert await _numbered(backend) == [(5, b"e5"), (6, b"e6"), (7, b"e7")]
    assert await _gaps(client, backend) is None
    page = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    assert page.summary == b"sum" and page.first_seq == 5
    await _edit(backend, 6)  # 5 7
    page = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    assert await backend.compact(  # a number in a gap: folds 5 alone
        "s", generation=page.generation, before_seq=6, summary=b"sum2", write_id=_wid()
    )
    assert await _numbered(backend) == [(7, b"e7")]
    assert await _gaps(client, backend) is None


async def test_a_save_numbers_on_after_the_old_tail(client: Any, backend: RedisBackend) -> None:
    await _append(backend, *_entries(4))  # 0-3
    await backend.pop("s", 1, write_id=_wid(), fence=None)  # 3 unused, the tail 4
    written = await backend.replace(
        "s",
        [b"a", b"b"],
        summary=None,
        ttl=None,
        overwrite=True,
        write_id=_wid(),
        fence=None,
    )
    assert written is not None and written.length == 2
    assert await _numbered(backend) == [(4, b"a"), (5, b"b")]
    assert await _gaps(client, backend) is None
    await _append(backend, b"c")
    assert await _numbered(backend) == [(4, b"a"), (5, b"b"), (6, b"c")]
    await backend.delete("s", write_id=_wid(), fence=None)
    assert await backend.replace(
        "s", [b"x"], summary=None, ttl=None, overwrite=False, write_id=_wid(), fence=None
    )
    assert await _numbered(backend) == [(0, b"x")]  # a new session: from 0


# -- read_range ---------------------------------------------------------------------------------


async def test_read_range_pages_by_number_across_gaps(backend: RedisBackend) -> None:
    await _append(backend, *_entries(8))  # 0-7
    for seq in (1, 3, 6):
        await _edit(backend, seq)  # 0 2 4 5 7
    version = await _version(backend)

    async def page(
        before: int | None = None, after: int | None = None, limit: int = 2
    ) -> list[int]:
        got = await backend.read_range("s", before=before, after=after, limit=limit, touch=None)
        assert got.entries == [f"e{seq}".encode() for seq in got.seqs()]
        assert got.version == version and got.summary is None
        if got.entries:
            assert got.length == 5
        return got.seqs()

    assert await page() == [5, 7]
    assert await page(limit=10) == [0, 2, 4, 5, 7]
    assert await page(before=5) == [2, 4]
    assert await page(before=4, limit=10) == [0, 2]
    assert await page(before=3, limit=1) == [2]  # a number in a gap
    assert await page(before=100, limit=1) == [7]
    assert await page(before=0) == []
    assert await page(after=2) == [4, 5]
    assert await page(after=3) == [4, 5]
    assert await page(after=5, limit=5) == [7]
    assert await page(after=-10, limit=3) == [0, 2, 4]
    assert await page(after=7) == []
    empty = await backend.read_range("s", before=0, after=None, limit=3, touch=None)
    assert (empty.entries, empty.first_seq, empty.version) == ([], 0, version)
    none = await backend.read_range("none", before=None, after=None, limit=3, touch=None)
    assert (none.entries, none.first_seq, none.version) == ([], 0, 0)


async def test_read_range_touches_the_expiry(client: Any, backend: RedisBackend) -> None:
    await backend.append("s", _entries(3), max_entries=None, ttl=5, write_id=_wid(), fence=None)
    page = await backend.read_range("s", before=None, after=0, limit=1, touch=600)
    assert page.seqs() == [1]
    assert 500_000 < await client.pttl(backend.key("s")) <= 600_000


# -- edit: conditions, write ids, fences --------------------------------------------------------


async def test_an_edit_on_a_stale_version_or_a_missing_number_changes_nothing(
    backend: RedisBackend,
) -> None:
    assert await _edit(backend, 0, b"x") == "missing"  # no session
    assert await _edit(backend, 0, b"x", version=5) == "missing"
    await _append(backend, *_entries(4))
    await _edit(backend, 2)  # 0 1 3
    version = await _version(backend)
    assert await _edit(backend, 1, b"x", version=version - 1) == "stale"
    for seq in (-1, 2, 4, 10):  # below the head, in a gap, at and past the tail
        assert await _edit(backend, seq, b"x") == "missing"
        assert await _edit(backend, seq, version=version) == "missing"
    assert await _numbered(backend) == [(0, b"e0"), (1, b"e1"), (3, b"e3")]
    assert await _version(backend) == version
    assert await _edit(backend, 1, b"x", version=version) == Written(3, version + 1)


async def test_a_replayed_edit_is_not_applied_again(backend: RedisBackend) -> None:
    await _append(backend, *_entries(4))
    version = await _version(backend)
    assert await _edit(backend, 1, write_id="a" * 16) == Written(3, version + 1)
    await _append(backend, b"e4")
    # Whatever its arguments say now: the session as it is, not applied.
    replay = await _edit(backend, 0, truncate=True, version=1, write_id="a" * 16)
    assert replay == Written(4, version + 2, applied=False)
    assert await _numbered(backend) == [(0, b"e0"), (2, b"e2"), (3, b"e3"), (4, b"e4")]
    # An edit that deleted the session, replayed: still gone, its id remembered.
    assert await _edit(backend, 0, truncate=True, write_id="b" * 16) == Written(0, 0)
    assert await _edit(backend, 0, truncate=True, write_id="b" * 16) == Written(0, 0, applied=False)


async def test_a_fenced_edit_writes_nothing(backend: RedisBackend) -> None:
    await _append(backend, *_entries(3))
    assert await backend.acquire_lease("s", "holder", 30)
    with pytest.raises(Fenced):
        await _edit(backend, 1, b"x", fence="someone-else")
    with pytest.raises(Fenced):
        await _edit(backend, 9, b"x", version=1, fence="someone-else")  # before any check
    assert await _numbered(backend) == [(0, b"e0"), (1, b"e1"), (2, b"e2")]
    assert isinstance(await _edit(backend, 1, b"x", fence="holder"), Written)
    # A retry of a write applied while the lease was held is recognised first.
    write_id = _wid()
    await _edit(backend, 0, b"y", fence="holder", write_id=write_id)
    assert await backend.release_lease("s", "holder")
    assert await backend.acquire_lease("s", "next", 30)
    replay = await _edit(backend, 0, b"y", fence="holder", write_id=write_id)
    assert isinstance(replay, Written) and not replay.applied


# -- lists written by 0.1.0 ---------------------------------------------------------------------


async def test_a_0_1_0_list_is_numbered_from_0_and_edited_in_place(
    client: Any, backend: RedisBackend
) -> None:
    # As 0.1.0 wrote them: the list and a version key, no meta hash.
    await client.rpush(backend.key("old"), *_entries(4))
    await client.set(backend.key("old", "version"), 41)
    await client.pexpire(backend.key("old"), 60_000)
    page = await backend.read_range("old", before=None, after=0, limit=2, touch=None)
    assert (page.seqs(), page.version, page.generation) == ([1, 2], 41, 0)
    assert await _edit(backend, 1, version=40, session="old") == "stale"
    assert await _edit(backend, 1, version=41, session="old") == Written(3, 42)
    assert await client.exists(backend.key("old", "version")) == 0
    assert 0 < await client.pttl(backend.key("old", "meta")) <= 60_000  # with the list
    assert await _numbered(backend, "old") == [(0, b"e0"), (2, b"e2"), (3, b"e3")]
    await _append(backend, b"e4", session="old")
    assert (await _numbered(backend, "old"))[-1] == (4, b"e4")

    await client.rpush(backend.key("popped"), *_entries(3))
    await backend.pop("popped", 1, write_id=_wid(), fence=None)
    await _append(backend, b"e3", session="popped")
    assert await _numbered(backend, "popped") == [(0, b"e0"), (1, b"e1"), (3, b"e3")]

    await client.rpush(backend.key("saved"), *_entries(3))  # numbered 0-2: a save goes on at 3
    await backend.replace(
        "saved", [b"x"], summary=None, ttl=None, overwrite=True, write_id=_wid(), fence=None
    )
    assert await _numbered(backend, "saved") == [(3, b"x")]


# -- long gaps: kept beside the meta hash -------------------------------------------------------


async def test_many_gaps_move_out_of_the_meta_hash_and_back(
    client: Any, backend: RedisBackend
) -> None:
    await backend.append("s", _entries(60), max_entries=None, ttl=60, write_id=_wid(), fence=None)
    for seq in range(1, 59, 2):
        await _edit(backend, seq)
    expected = [(seq, f"e{seq}".encode()) for seq in [*range(0, 60, 2), 59]]
    assert await _numbered(backend) == expected
    assert await _gaps(client, backend) == b"*"
    gaps_key = backend.key("s", "gaps")
    assert parse_gaps(await client.get(gaps_key)) == [(seq, 1) for seq in range(1, 59, 2)]
    assert 0 < await client.pttl(gaps_key) <= 60_000  # with the list
    page = await backend.read_range("s", before=31, after=None, limit=3, touch=None)
    assert page.seqs() == [26, 28, 30]
    await _append(backend, b"e60", keep=31)  # trims 0: the gaps stay out, re-expired
    assert await _numbered(backend) == [*expected[1:], (60, b"e60")]
    assert await _gaps(client, backend) == b"*"
    await backend.append("s", [b"e61"], max_entries=5, ttl=90, write_id=_wid(), fence=None)
    assert [seq for seq, _ in await _numbered(backend)] == [56, 58, 59, 60, 61]
    assert await _gaps(client, backend) == b"57:1"
    assert await client.exists(gaps_key) == 0  # back in the hash
    # Whatever ends a session ends its gaps: a delete, a pop or an edit that empties it.
    for session, end in (
        ("deleted", backend.delete("deleted", write_id=_wid(), fence=None)),
        ("popped", backend.pop("popped", 60, write_id=_wid(), fence=None)),
        ("edited", _edit(backend, 0, truncate=True, session="edited")),
    ):
        await _append(backend, *_entries(60), session=session)
        for seq in range(1, 59, 2):
            await _edit(backend, seq, session=session)
        assert await client.exists(backend.key(session, "gaps")) == 1
        await end
        assert await client.exists(backend.key(session, "gaps")) == 0
        assert await _gaps(client, backend, session) is None


# -- a replace with numbers (a restore, an import, a fork), and the numbers of a snapshot -------


async def _replace(
    backend: RedisBackend,
    entries: list[bytes],
    numbers: list[int] | None,
    *,
    session: str = "s",
    overwrite: bool = True,
    write_id: str | None = None,
    fence: str | None = None,
    ttl: float | None = None,
) -> Written | None:
    return await backend.replace(
        session,
        entries,
        summary=None,
        ttl=ttl,
        overwrite=overwrite,
        write_id=write_id or _wid(),
        fence=fence,
        numbers=numbers,
    )


async def _snapshot_numbers(backend: RedisBackend, session: str = "s") -> list[int] | None:
    raw = await backend.snapshot(session)
    assert raw is not None
    assert raw.numbers == [seq for seq, _ in await _numbered(backend, session)]
    return raw.numbers


async def test_a_replace_takes_the_numbers_given(client: Any, backend: RedisBackend) -> None:
    written = await _replace(backend, [b"a", b"b", b"c"], [5, 6, 7])  # a new session
    assert written is not None and (written.length, written.applied) == (3, True)
    assert await _numbered(backend) == [(5, b"a"), (6, b"b"), (7, b"c")]
    assert await _gaps(client, backend) is None
    await _append(backend, b"d")
    assert await _snapshot_numbers(backend) == [5, 6, 7, 8]
    # With gaps: 3-4 and 7-9, found by number as any other gaps.
    await _replace(backend, _entries(4), [2, 5, 6, 10])
    assert await _numbered(backend) == [(2, b"e0"), (5, b"e1"), (6, b"e2"), (10, b"e3")]
    assert await _gaps(client, backend) == b"3:2,2:3"
    page = await backend.read_range("s", before=10, after=None, limit=2, touch=None)
    assert page.seqs() == [5, 6]
    assert await _edit(backend, 6) == Written(3, await _version(backend))  # joins 7-9
    assert await _gaps(client, backend) == b"3:2,1:4"
    await _append(backend, b"e4")
    assert await _snapshot_numbers(backend) == [2, 5, 10, 11]


async def test_a_replace_keeps_the_old_next_number_when_higher(
    client: Any, backend: RedisBackend
) -> None:
    await _append(backend, *_entries(10))  # 0-9: the next is 10
    before = await _version(backend)
    written = await _replace(backend, [b"a", b"b"], [0, 1])
    assert written == Written(2, before + 1)
    assert await _numbered(backend) == [(0, b"a"), (1, b"b")]
    assert await _gaps(client, backend) == b"2:8"  # 2-9 stay unused
    await _append(backend, b"c")
    assert await _snapshot_numbers(backend) == [0, 1, 10]  # after the old tail
    await _replace(backend, [b"x", b"y"], [4, 7])  # 0-10 given before: 4 and 7 again are fine
    assert await _gaps(client, backend) == b"5:2,1:3"  # 5-6, and 8-10 up to the old tail 11
    await _append(backend, b"z")
    assert await _snapshot_numbers(backend) == [4, 7, 11]
    await _replace(backend, [b"p"], [30])  # higher than the old tail: next 31
    await _append(backend, b"q")
    assert await _numbered(backend) == [(30, b"p"), (31, b"q")]
    assert await _gaps(client, backend) is None


async def test_a_replace_with_numbers_over_a_0_1_0_list(client: Any, backend: RedisBackend) -> None:
    await client.rpush(backend.key("old"), *_entries(5))  # 0-4, as a read of it reports
    await client.set(backend.key("old", "version"), 41)
    assert await _snapshot_numbers(backend, "old") == list(range(5))
    assert await _replace(backend, [b"a", b"b"], [1, 2], session="old") == Written(2, 42)
    assert await client.exists(backend.key("old", "version")) == 0
    assert await _gaps(client, backend, "old") == b"3:2"  # 3-4, up to the tail 5
    await _append(backend, b"c", session="old")
    assert await _snapshot_numbers(backend, "old") == [1, 2, 5]
    await client.rpush(backend.key("older"), *_entries(3))
    await _replace(backend, [b"a"], [7], session="older")
    await _append(backend, b"b", session="older")
    assert await _snapshot_numbers(backend, "older") == [7, 8]


async def test_a_replace_with_many_gaps_keeps_them_beside_the_meta_hash(
    client: Any, backend: RedisBackend
) -> None:
    numbers = list(range(0, 80, 2))  # 39 gaps: too long for the hash
    entries = [f"e{seq}".encode() for seq in numbers]
    await _replace(backend, entries, numbers, ttl=60)
    assert await _gaps(client, backend) == b"*"
    gaps_key = backend.key("s", "gaps")
    assert parse_gaps(await client.get(gaps_key)) == [(seq, 1) for seq in range(1, 79, 2)]
    assert 0 < await client.pttl(gaps_key) <= 60_000  # with the list
    assert await _snapshot_numbers(backend) == numbers
    page = await backend.read_range("s", before=41, after=None, limit=2, touch=None)
    assert page.seqs() == [38, 40]
    # Numbers without gaps (below the old tail, 79): one gap up to it, back in the hash.
    await _replace(backend, [b"a", b"b"], [0, 1])
    assert await client.exists(gaps_key) == 0
    assert await _gaps(client, backend) == b"2:77"
    # And without numbers, as ever: on after the old tail, no gaps.
    await _replace(backend, entries, numbers)
    await _replace(backend, [b"c"], None)
    assert await _numbered(backend) == [(79, b"c")]
    assert await client.exists(gaps_key) == 0 and await _gaps(client, backend) is None


async def test_a_snapshot_says_each_entrys_number(backend: RedisBackend) -> None:
    await _append(backend, *_entries(8))  # 0-7
    assert await _snapshot_numbers(backend) == list(range(8))
    await backend.pop("s", 2, write_id=_wid(), fence=None)  # 6-7 unused
    await _edit(backend, 2)
    await _edit(backend, 4, b"E4")
    await _append(backend, b"e8", b"e9")
    assert await _snapshot_numbers(backend) == [0, 1, 3, 4, 5, 8, 9]
    await _edit(backend, 0)  # the head
    await _append(backend, b"e10", keep=5)  # trims 1
    assert await _snapshot_numbers(backend) == [4, 5, 8, 9, 10]
    # Copied elsewhere with its numbers (a fork), the copy numbers as the original.
    raw = await backend.snapshot("s")
    assert raw is not None and raw.numbers is not None
    await _replace(backend, raw.entries, raw.numbers, session="copy")
    assert await _numbered(backend, "copy") == await _numbered(backend)
    await _append(backend, b"e11", session="copy")
    assert await _snapshot_numbers(backend, "copy") == [4, 5, 8, 9, 10, 11]
    assert await backend.snapshot("none") is None


async def test_a_replayed_replace_with_numbers_is_not_applied_again(
    backend: RedisBackend,
) -> None:
    write_id = _wid()
    first = await _replace(backend, [b"a", b"b"], [3, 9], write_id=write_id)
    assert first is not None and first.applied
    await _append(backend, b"c")
    # Whatever its arguments say now: the session as it is, not applied.
    replay = await _replace(backend, [b"x"], [0], write_id=write_id, overwrite=False)
    assert replay == Written(3, first.version + 1, applied=False)
    assert await _snapshot_numbers(backend) == [3, 9, 10]
    # Nor is one that found the session there without overwrite, nor a fenced one.
    assert await _replace(backend, [b"x"], [0], overwrite=False) is None
    assert await backend.acquire_lease("s", "holder", 30)
    with pytest.raises(Fenced):
        await _replace(backend, [b"x"], [0], fence="someone-else")
    assert await _numbered(backend) == [(3, b"a"), (9, b"b"), (10, b"c")]


async def test_numbers_too_large_for_lua_are_refused(backend: RedisBackend) -> None:
    # The scripts count in doubles: the largest number kept exactly, with room to append on...
    top = NUMBERS_BELOW - 1
    await _replace(backend, [b"a", b"b"], [top - 10**12, top])
    await _append(backend, b"c")
    assert await _snapshot_numbers(backend) == [top - 10**12, top, top + 1]
    # ...and one above it refused before anything is written, never stored wrong.
    with pytest.raises(InvalidInputError):
        await _replace(backend, [b"x", b"y"], [0, NUMBERS_BELOW], session="big")
    assert await backend.snapshot("big") is None
