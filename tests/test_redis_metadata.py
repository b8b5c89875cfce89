"""The Redis backend's session metadata and times, and the index's cursor (on fakeredis and on a
real server; what only real servers show, a cluster, faults, round trips, the hash's encoding, is
in test_redis_metadata_servers.py).

A session's metadata entry has a key of its own in the session's slot (``:metadata``), flagged
by ``m`` in the meta hash, whose ``c`` and ``u`` hold its created and updated times (the
writer's clock). They expire with the session and go with it; only history writes move
``u``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from chatstate import RedisStateStore
from chatstate.stores import KEEP, Fenced, Page, Written
from chatstate.stores.redis._backend import RedisBackend

from .conftest import kinds, store_of_kind

TICK = 0.005
"""A pause longer than the times' resolution (ms): a write after it has a later time."""


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
    backend: RedisBackend,
    *entries: bytes,
    meta: bytes | None = None,
    ttl: float | None = None,
    session: str = "s",
    keep: int | None = None,
) -> Written:
    return await backend.append(
        session,
        list(entries or [b"e"]),
        max_entries=keep,
        ttl=ttl,
        write_id=_wid(),
        fence=None,
        meta=meta,
    )


async def _replace(
    backend: RedisBackend, *entries: bytes, meta: Any = KEEP, session: str = "s"
) -> Written | None:
    return await backend.replace(
        session,
        list(entries or [b"r"]),
        summary=None,
        ttl=60,
        overwrite=True,
        write_id=_wid(),
        fence=None,
        meta=meta,
    )


async def _described(
    backend: RedisBackend, session: str = "s", touch: float | None = None
) -> Page[bytes]:
    return await backend.read(
        session, limit=None, summary=False, touch=touch, numbers=False, meta=True
    )


async def _write_meta(
    backend: RedisBackend, meta: bytes | None, *, session: str = "s", **options: Any
) -> Written | None:
    options.setdefault("write_id", _wid())
    options.setdefault("fence", None)
    return await backend.write_meta(session, meta, **options)


async def _ttls(client: Any, backend: RedisBackend, session: str = "s") -> list[int]:
    """The PTTL of the session's list, meta hash and metadata."""
    kinds = ("messages", "meta", "metadata")
    return [await client.pttl(backend.key(session, kind)) for kind in kinds]


# -- the round trip ------------------------------------------------------------------------------


async def test_metadata_goes_in_with_an_append_and_comes_out_of_reads_and_snapshots(
    backend: RedisBackend, client: Any
) -> None:
    big = b"\x00{" + b"m" * 65_534  # 64 KiB, bytes of every kind
    written = await _append(backend, b"a", b"b", meta=big)
    assert (written.length, written.applied) == (2, True)
    page = await _described(backend)
    assert (page.entries, page.meta) == ([b"a", b"b"], big)
    assert page.created > 1.7e9 and page.created == page.updated
    numbered = await backend.read("s", limit=1, summary=True, touch=None, numbers=True, meta=True)
    assert (numbered.entries, numbered.meta, numbered.version) == ([b"b"], big, written.version)
    plain = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    assert (plain.meta, plain.created, plain.updated) == (None, 0.0, 0.0)  # not asked for
    snapshot = await backend.snapshot("s")
    assert snapshot is not None and snapshot.meta == big
    # Its own key in the slot: the meta hash holds only its flag.
    assert await client.get(backend.key("s", "metadata")) == big
    assert await client.hget(backend.key("s", "meta"), "m") == b"1"
    # An append without metadata keeps it; one with it replaces it.
    await _append(backend, b"c")
    assert (await _described(backend)).meta == big
    await _append(backend, b"d", meta=b"new")
    assert (await _described(backend)).meta == b"new"


async def test_a_session_without_metadata_and_an_unknown_one(backend: RedisBackend) -> None:
    await _append(backend, b"a")
    page = await _described(backend)
    assert page.meta is None and page.created > 0
    assert (await backend.snapshot("s")).meta is None  # type: ignore[union-attr]
    assert await _described(backend, "nobody") == Page([], 0)


async def test_an_append_with_metadata_refused_by_its_fence_writes_neither(
    backend: RedisBackend, client: Any
) -> None:
    await _append(backend, b"a", meta=b"before")
    assert await backend.acquire_lease("s", "holder", 60)
    with pytest.raises(Fenced):
        await backend.append(
            "s", [b"b"], max_entries=None, ttl=None, write_id=_wid(), fence="stale", meta=b"x"
        )
    page = await _described(backend)
    assert (page.entries, page.meta) == ([b"a"], b"before")


async def test_replace_keeps_sets_or_removes_the_metadata(
    backend: RedisBackend, client: Any
) -> None:
    await _append(backend, b"a", meta=b"m1")
    await _replace(backend, b"r1")  # KEEP
    page = await _described(backend)
    assert (page.entries, page.meta) == ([b"r1"], b"m1")
    await _replace(backend, b"r2", meta=b"m2")
    assert (await _described(backend)).meta == b"m2"
    await _replace(backend, b"r3", meta=None)
    assert (await _described(backend)).meta is None
    assert not await client.exists(backend.key("s", "metadata"))
    assert await client.hget(backend.key("s", "meta"), "m") is None
    # A new session by replace: with metadata, or (KEEP) without.
    await _replace(backend, b"n", meta=b"new", session="n")
    created = await _described(backend, "n")
    assert created.meta == b"new" and created.created == created.updated > 0
    await _replace(backend, b"k", session="k")
    assert (await _described(backend, "k")).meta is None
    # A replace that does not overwrite an existing session changes nothing.
    kept = await backend.replace(
        "n", [b"x"], summary=None, ttl=None, overwrite=False, write_id=_wid(), fence=None, meta=None
    )
    assert kept is None and (await _described(backend, "n")).meta == b"new"


# -- write_meta ----------------------------------------------------------------------------------


async def test_write_meta_sets_and_removes_and_keeps_everything_else(
    backend: RedisBackend, client: Any
) -> None:
    await _append(backend, b"a", b"b", ttl=60)
    before = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    first = await _described(backend)
    await anyio.sleep(TICK)
    written = await _write_meta(backend, b"doc")
    assert written == Written(2, before.version, applied=True)
    after = await backend.read("s", limit=None, summary=False, touch=None, numbers=True, meta=True)
    assert (after.meta, after.version, after.generation) == (
        b"doc",
        before.version,
        before.generation,
    )
    assert (after.created, after.updated) == (first.created, first.updated)  # not a history write
    list_ttl, hash_ttl, meta_ttl = await _ttls(client, backend)
    assert 59_000 < meta_ttl <= list_ttl <= 60_000 and hash_ttl > 59_000
    assert await _write_meta(backend, None) == Written(2, before.version, applied=True)
    assert (await _described(backend)).meta is None
    assert not await client.exists(backend.key("s", "metadata"))
    # Without an expiry, the metadata has none either.
    await _append(backend, b"p", session="p")
    await _write_meta(backend, b"doc", session="p")
    assert (await _ttls(client, backend, "p"))[2] == -1


async def test_write_meta_without_a_session_writes_nothing(
    backend: RedisBackend, client: Any
) -> None:
    assert await _write_meta(backend, b"doc", session="none") is None
    assert await client.keys(f"{backend.prefix}:*") == []
    await _append(backend, b"a", session="gone")
    assert await backend.delete("gone", write_id=_wid(), fence=None)
    assert await _write_meta(backend, b"doc", session="gone") is None
    assert not await client.exists(backend.key("gone", "metadata"))


async def test_write_meta_repeated_by_its_write_id_is_not_applied_again(
    backend: RedisBackend,
) -> None:
    await _append(backend, b"a")
    wid = _wid()
    first = await _write_meta(backend, b"first", write_id=wid)
    assert first is not None and first.applied
    await _write_meta(backend, b"second")
    again = await _write_meta(backend, None, write_id=wid)  # a retry of the first
    assert again == Written(1, first.version, applied=False)
    assert (await _described(backend)).meta == b"second"
    # Remembered like any write's id: an append with it is a retry too.
    assert not (
        await backend.append("s", [b"x"], max_entries=None, ttl=None, write_id=wid, fence=None)
    ).applied


async def test_write_meta_is_fenced_after_its_write_id_is_checked(backend: RedisBackend) -> None:
    await _append(backend, b"a")
    wid = _wid()
    assert await _write_meta(backend, b"held", write_id=wid, fence=None)
    assert await backend.acquire_lease("s", "holder", 60)
    with pytest.raises(Fenced):
        await _write_meta(backend, b"stale", fence="other")
    assert (await _described(backend)).meta == b"held"
    # A retry of a write applied earlier is recognised first, whatever its fence.
    retried = await _write_meta(backend, b"held", write_id=wid, fence="other")
    assert retried is not None and not retried.applied
    assert await _write_meta(backend, b"mine", fence="holder")
    assert (await _described(backend)).meta == b"mine"


# -- times ---------------------------------------------------------------------------------------


async def test_updated_moves_with_history_writes_only_and_created_stays(
    backend: RedisBackend,
) -> None:
    await _append(backend, b"a", b"b", b"c", b"d", ttl=60)
    page = await _described(backend)
    created, updated = page.created, page.updated
    assert created == updated

    async def moved() -> bool:
        nonlocal updated
        await anyio.sleep(TICK)
        page = await _described(backend)
        assert page.created == created
        was, updated = updated, page.updated
        return updated > was

    # Not a history write: a metadata write, a read that touches, a range read, a fold.
    await anyio.sleep(TICK)
    await _write_meta(backend, b"doc")
    await backend.read("s", limit=2, summary=True, touch=60, numbers=True)
    await backend.read_range("s", before=None, after=0, limit=2, touch=60)
    numbered = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    assert await backend.compact(
        "s", generation=numbered.generation, before_seq=1, summary=b"sum", write_id=_wid()
    )
    assert not await moved()
    # History writes.
    await _append(backend, b"e")
    assert await moved()
    assert isinstance(
        await backend.edit("s", 2, b"C", truncate=False, version=None, write_id=_wid(), fence=None),
        Written,
    )
    assert await moved()
    await backend.pop("s", 1, write_id=_wid(), fence=None)
    assert await moved()
    await _replace(backend, b"r")
    assert await moved()
    assert (await _described(backend)).meta == b"doc"  # kept by all of them


async def test_a_session_created_again_after_a_delete_has_new_times_and_no_metadata(
    backend: RedisBackend,
) -> None:
    await _append(backend, b"a", meta=b"doc")
    first = await _described(backend)
    await backend.delete("s", write_id=_wid(), fence=None)
    await anyio.sleep(TICK)
    await _append(backend, b"b")
    again = await _described(backend)
    assert again.meta is None and again.created > first.created


# -- expiry and removal --------------------------------------------------------------------------


async def test_the_metadata_takes_every_expiry_of_its_session(
    backend: RedisBackend, client: Any
) -> None:
    await _append(backend, b"a", meta=b"doc", ttl=30)
    list_ttl, _, meta_ttl = await _ttls(client, backend)
    assert 29_000 < meta_ttl <= list_ttl <= 30_000
    await backend.read("s", limit=1, summary=False, touch=90, numbers=False)  # sliding
    assert (await _ttls(client, backend))[2] > 89_000
    await backend.read_range("s", before=None, after=None, limit=1, touch=120)
    assert (await _ttls(client, backend))[2] > 119_000
    await _replace(backend, b"r")  # ttl 60
    assert 59_000 < (await _ttls(client, backend))[2] <= 60_000
    numbered = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    await backend.compact(
        "s", generation=numbered.generation, before_seq=0, summary=b"s", write_id=_wid()
    )
    assert 59_000 < (await _ttls(client, backend))[2] <= 60_000
    await _append(backend, b"b")  # no expiry: for none of them
    assert await _ttls(client, backend) == [-1, -1, -1]


async def test_the_metadata_expires_with_its_session(backend: RedisBackend, client: Any) -> None:
    await _append(backend, b"a", meta=b"doc", ttl=0.2)
    await backend.read("s", limit=1, summary=False, touch=0.3, numbers=False)
    await anyio.sleep(0.5)  # the server's clock: a real wait
    assert await _described(backend) == Page([], 0)
    assert not await client.exists(backend.key("s", "metadata"), backend.key("s", "meta"))


@pytest.mark.parametrize("how", ["delete", "pop", "edit", "truncate"])
async def test_the_metadata_and_times_go_with_their_session(
    backend: RedisBackend, client: Any, how: str
) -> None:
    await _append(backend, b"a", b"b", meta=b"doc", ttl=60)
    if how == "delete":
        assert await backend.delete("s", write_id=_wid(), fence=None)
    elif how == "pop":
        assert (await backend.pop("s", 2, write_id=_wid(), fence=None)).length == 0
    else:
        first = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
        if how == "edit":
            await backend.edit(
                "s",
                first.first_seq + 1,
                None,
                truncate=False,
                version=None,
                write_id=_wid(),
                fence=None,
            )
            assert (await _described(backend)).meta == b"doc"  # one left: kept
            seq = first.first_seq
        else:
            seq = first.first_seq
        emptied = await backend.edit(
            "s", seq, None, truncate=True, version=None, write_id=_wid(), fence=None
        )
        assert emptied == Written(0, 0)
    assert not await client.exists(backend.key("s", "metadata"))
    fields = set(await client.hkeys(backend.key("s", "meta")))
    assert not fields & {b"m", b"c", b"u"}
    assert await _described(backend) == Page([], 0)


# -- the conversation index's cursor ------------------------------------------------------------


NOW = float(round(time.time()))


@pytest.fixture(autouse=True)
def _now() -> None:
    """``NOW`` as each test starts: an index's keys expire by the server's clock, so a time read
    when the module was collected, minutes before, could be past the deadlines it gives."""
    global NOW
    NOW = float(round(time.time()))


"""The index's clock in these tests: now, in whole seconds (times come back in ms)."""


async def _index(backend: RedisBackend, members: dict[str, float]) -> None:
    """Index each member as active ``NOW - its age``, for an hour."""
    for member, age in members.items():
        await backend.index_conversation("u", member, now=NOW - age, ttl=3600)


async def _list(
    backend: RedisBackend, limit: int = 100, after: tuple[float, str] | None = None
) -> list[tuple[str, float]]:
    """The listing, with each member's age (as :func:`_index` takes them)."""
    cursor = None if after is None else (NOW - after[0], after[1])
    listed = await backend.list_conversations("u", now=NOW, offset=0, limit=limit, after=cursor)
    return [(member, NOW - active) for member, active in listed]


async def test_a_listing_is_newest_first_ties_by_member_descending(backend: RedisBackend) -> None:
    members = {"b": 10.0, "a": 10.0, "c": 10.0, "old": 15.0, "new": 0.0, "\x1fs:id": 10.0}
    await _index(backend, members)
    listed = await _list(backend)
    assert [member for member, _ in listed] == ["new", "c", "b", "a", "\x1fs:id", "old"]
    assert dict(listed) == members  # every member unchanged, its time in seconds
    offset = await backend.list_conversations("u", now=NOW, offset=2, limit=2)
    assert [member for member, _ in offset] == ["b", "a"]


async def test_paging_by_cursor_gives_each_member_once_in_order(backend: RedisBackend) -> None:
    # Many with one time (more than a page of the script's scan), some before and after them.
    members = {f"t{index:02}": 10.0 for index in range(12)}
    members |= {"\x1fsession:x": 10.0, "\x1f": 10.0, "z": 8.5, "y": 10.75, "\xe4": 10.0}
    await _index(backend, members)
    expected = await _list(backend)
    assert len(expected) == len(members)
    for limit in (1, 2, 5):
        pages: list[tuple[str, float]] = []
        after: tuple[float, str] | None = None
        while page := await _list(backend, limit, after):
            assert len(page) <= limit
            pages += page
            after = (page[-1][1], page[-1][0])
        assert pages == expected
    # A cursor whose member is gone (or moved) still starts after its pair.
    assert await _list(backend, 2, (10.0, "t05x")) == [("t05", 10.0), ("t04", 10.0)]
    assert await _list(backend, 2, (10.5, "")) == [("y", 10.75)]


async def test_a_cursor_listing_leaves_out_members_past_their_deadline(
    backend: RedisBackend,
) -> None:
    await backend.index_conversation("u", "short", now=NOW - 10, ttl=5)
    await backend.index_conversation("u", "long", now=NOW - 11, ttl=100)
    listed = await backend.list_conversations("u", now=NOW, offset=0, limit=5, after=(NOW, ""))
    assert listed == [("long", NOW - 11)]


# -- data written before ------------------------------------------------------------------------


async def _write_as_before(client: Any, backend: RedisBackend) -> None:
    """A session exactly as the store wrote it before metadata (chatstate at 58f14e2, run on
    fakeredis): three entries, a pop's gap up to the tail, three write ids, no expiry."""
    await client.rpush(backend.key("old"), b"e0", b"e1", b"e2")
    ids = b"".join(bytes(7) + bytes([byte]) for byte in (0xA1, 0xA2, 0xA3))
    await client.hset(
        backend.key("old", "meta"),
        mapping={
            "tail": b"4",
            "gen": b"243076891855320",
            "ver": b"94820641806672",
            "w1": ids,
            "wn": b"3",
            "h": b"3:1",
        },
    )


async def test_a_session_written_before_reads_as_undescribed_and_takes_metadata(
    backend: RedisBackend, client: Any
) -> None:
    await _write_as_before(client, backend)
    page = await backend.read("old", limit=None, summary=False, touch=None, numbers=True, meta=True)
    assert (page.entries, page.seqs(), page.version) == (
        [b"e0", b"e1", b"e2"],
        [0, 1, 2],
        94820641806672,
    )
    assert (page.meta, page.created, page.updated) == (None, 0.0, 0.0)
    assert (await backend.snapshot("old")).meta is None  # type: ignore[union-attr]
    # Its remembered ids still count.
    assert not (
        await _write_meta(backend, b"x", session="old", write_id="00000000000000a2")
    ).applied  # type: ignore[union-attr]
    assert await _write_meta(backend, b"doc", session="old") == Written(3, 94820641806672)
    written = await _append(backend, b"e4", session="old")
    page = await backend.read("old", limit=None, summary=False, touch=None, numbers=True, meta=True)
    assert page.seqs() == [0, 1, 2, 4] and page.version == written.version == 94820641806673
    assert page.meta == b"doc" and page.created == 0.0 and page.updated > 1.7e9  # created: unknown


async def test_a_list_written_by_0_1_0_takes_metadata_at_its_version(
    backend: RedisBackend, client: Any
) -> None:
    await client.rpush(backend.key("v"), b"a", b"b")
    await client.set(backend.key("v", "version"), 41)
    await client.set(backend.key("v", "summary"), b"sum")
    await client.pexpire(backend.key("v"), 50_000)
    await client.pexpire(backend.key("v", "summary"), 50_000)
    before = await backend.read("v", limit=None, summary=True, touch=None, numbers=True)
    assert await _write_meta(backend, b"doc", session="v") == Written(2, before.version)
    after = await backend.read("v", limit=None, summary=True, touch=None, numbers=True, meta=True)
    assert (after.entries, after.first_seq, after.summary) == ([b"a", b"b"], 0, b"sum")
    assert (after.version, after.generation, after.meta) == (41, 0, b"doc")
    assert not await client.exists(backend.key("v", "version"))
    _, hash_ttl, meta_ttl = await _ttls(client, backend, "v")
    assert 0 < meta_ttl <= 50_000 and 0 < hash_ttl <= 50_000
    assert (await _append(backend, b"c", session="v")).version == 42
