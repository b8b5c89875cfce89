"""Every backend's numbers, the message ids of the history operations: never given twice in a
session's life (pops, edits and saves leave gaps), kept through trims and compaction, and the
Editing protocol (read_range, edit) over them."""

from __future__ import annotations

from typing import Any

import pytest

from chatstate.stores import Fenced
from chatstate.stores._backend import Written

_ids = iter(range(1, 1 << 60))


def _id() -> str:
    return f"{next(_ids):016x}"


async def _append(
    backend: Any, *entries: bytes, session: str = "s", max_entries: int | None = None
) -> Written:
    written: Written = await backend.append(
        session, list(entries), max_entries=max_entries, ttl=None, write_id=_id(), fence=None
    )
    return written


async def _edit(
    backend: Any,
    seq: int,
    entry: bytes | None,
    *,
    truncate: bool = False,
    version: int | None = None,
    write_id: str | None = None,
    fence: str | None = None,
    session: str = "s",
) -> Any:
    return await backend.edit(
        session,
        seq,
        entry,
        truncate=truncate,
        version=version,
        write_id=write_id or _id(),
        fence=fence,
    )


async def _numbered(backend: Any, session: str = "s") -> list[tuple[int, bytes]]:
    page = await backend.read(session, limit=None, summary=False, touch=None, numbers=True)
    seqs = page.seqs()
    assert seqs[:1] == [page.first_seq][: len(seqs)]
    assert len(seqs) == len(page.entries) == page.length
    assert seqs == sorted(set(seqs))
    return list(zip(seqs, page.entries, strict=True))


async def _state(backend: Any, session: str = "s") -> Any:
    """The session's numbers alone: version, generation, length."""
    return await backend.read(session, limit=0, summary=False, touch=None, numbers=True)


async def _start(backend: Any, *entries: bytes) -> int:
    """Write a new session of ``entries``; the number of its first."""
    await _append(backend, *entries)
    return (await _numbered(backend))[0][0]


async def test_appends_number_on_without_gaps(backend: Any) -> None:
    s = await _start(backend, b"a", b"b")
    await _append(backend, b"c")
    assert await _numbered(backend) == [(s, b"a"), (s + 1, b"b"), (s + 2, b"c")]


async def test_a_pop_leaves_its_numbers_unused(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c", b"d")
    generation = (await _state(backend)).generation
    await backend.pop("s", 2, write_id=_id(), fence=None)
    page = await _state(backend)
    assert page.generation != generation and page.length == 2
    written = await _append(backend, b"e")
    assert written.length == 3
    assert await _numbered(backend) == [(s, b"a"), (s + 1, b"b"), (s + 4, b"e")]


async def test_an_edit_replaces_one_entry_in_place(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c")
    await backend.append("s", [b"d"], max_entries=None, ttl=100.0, write_id=_id(), fence=None)
    before = await _state(backend)
    written = await _edit(backend, s + 1, b"B")
    assert isinstance(written, Written) and written.applied
    assert (written.length, written.version) == (4, before.version + 1)
    after = await _state(backend)
    assert after.version == before.version + 1 and after.generation != before.generation
    assert await _numbered(backend) == [(s, b"a"), (s + 1, b"B"), (s + 2, b"c"), (s + 3, b"d")]
    left = await backend.time_left("s")
    assert left is not False and left is not None and 90 < left <= 100  # the expiry kept


async def test_an_edit_removes_one_entry_and_renumbers_nothing(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c")
    written = await _edit(backend, s + 1, None)
    assert isinstance(written, Written) and written.length == 2
    assert await _numbered(backend) == [(s, b"a"), (s + 2, b"c")]
    assert (await _append(backend, b"d")).length == 3
    assert await _numbered(backend) == [(s, b"a"), (s + 2, b"c"), (s + 3, b"d")]
    # The first and the last go too, each leaving its number unused.
    await _edit(backend, s, None)
    await _edit(backend, s + 3, None)
    await _append(backend, b"e")
    assert await _numbered(backend) == [(s + 2, b"c"), (s + 4, b"e")]


async def test_an_edit_can_truncate_after_the_entry(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c", b"d")
    written = await _edit(backend, s + 1, b"B", truncate=True)
    assert isinstance(written, Written) and written.length == 2
    assert await _numbered(backend) == [(s, b"a"), (s + 1, b"B")]
    await _append(backend, b"e")
    assert await _numbered(backend) == [(s, b"a"), (s + 1, b"B"), (s + 4, b"e")]
    # Removing the entry and truncating after it: the "undo the last turn" step.
    await _edit(backend, s + 1, None, truncate=True)
    assert await _numbered(backend) == [(s, b"a")]


async def test_an_edit_that_empties_the_session_deletes_it(backend: Any) -> None:
    s = await _start(backend, b"a", b"b")
    token = _id()
    written = await _edit(backend, s, None, truncate=True, write_id=token)
    assert isinstance(written, Written) and (written.length, written.version) == (0, 0)
    assert await backend.time_left("s") is False
    assert (await _state(backend)).version == 0
    again = await _edit(backend, s, None, truncate=True, write_id=token)  # the retry
    assert isinstance(again, Written) and not again.applied


async def test_an_edit_is_refused_when_stale_or_missing(backend: Any) -> None:
    assert await _edit(backend, 0, b"x") == "missing"  # no session
    s = await _start(backend, b"a", b"b", b"c")
    version = (await _state(backend)).version
    assert await _edit(backend, s + 1, b"B", version=version - 1) == "stale"
    assert await _edit(backend, s + 7, b"B") == "missing"
    await _edit(backend, s + 1, None)
    assert await _edit(backend, s + 1, b"B", version=version + 1) == "missing"  # in a gap
    assert await _numbered(backend) == [(s, b"a"), (s + 2, b"c")]
    written = await _edit(backend, s + 2, b"C", version=version + 1)
    assert isinstance(written, Written) and written.version == version + 2


async def test_a_repeated_edit_is_not_applied_again(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c")
    token = _id()
    first = await _edit(backend, s + 1, None, write_id=token)
    assert isinstance(first, Written) and first.applied
    again = await _edit(backend, s + 2, None, write_id=token)
    assert isinstance(again, Written) and not again.applied
    assert (again.length, again.version) == (first.length, first.version)
    assert await _numbered(backend) == [(s, b"a"), (s + 2, b"c")]


async def test_a_fenced_edit_writes_nothing(backend: Any) -> None:
    s = await _start(backend, b"a", b"b")
    assert await backend.acquire_lease("s", "holder", 30.0)
    with pytest.raises(Fenced):
        await _edit(backend, s, b"A", fence="someone else")
    written = await _edit(backend, s, b"A", fence="holder")
    assert isinstance(written, Written)
    assert await _numbered(backend) == [(s, b"A"), (s + 1, b"b")]


async def test_the_bound_trims_by_count_across_gaps(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c", b"d", b"e")
    await _edit(backend, s + 2, None)  # a, b, d, e
    written = await _append(backend, b"f", b"g", max_entries=4)
    assert (written.length, written.trimmed) == (4, True)
    assert await _numbered(backend) == [(s + 3, b"d"), (s + 4, b"e"), (s + 5, b"f"), (s + 6, b"g")]
    await _edit(backend, s + 4, None)  # d, f, g
    written = await _append(backend, b"h", max_entries=3)
    assert (written.length, written.trimmed) == (3, True)
    assert await _numbered(backend) == [(s + 5, b"f"), (s + 6, b"g"), (s + 7, b"h")]
    written = await _append(backend, b"i", max_entries=10)
    assert (written.length, written.trimmed) == (4, False)


async def test_compaction_folds_by_number_across_gaps(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c", b"d", b"e")
    await _edit(backend, s + 2, None)  # a, b, d, e
    page = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    assert page.seqs() == [s, s + 1, s + 3, s + 4]
    done = await backend.compact(
        "s", generation=page.generation, before_seq=s + 2, summary=b"S", write_id=_id()
    )
    assert done
    assert await _numbered(backend) == [(s + 3, b"d"), (s + 4, b"e")]
    page = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    assert page.summary == b"S"
    await _edit(backend, s + 3, None)
    page = await backend.read("s", limit=None, summary=True, touch=None, numbers=True)
    await _append(backend, b"f")
    done = await backend.compact(  # an append meanwhile stays
        "s", generation=page.generation, before_seq=s + 5, summary=b"T", write_id=_id()
    )
    assert done
    assert await _numbered(backend) == [(s + 5, b"f")]


async def test_a_page_before_or_after_a_number(backend: Any) -> None:
    s = await _start(backend, *(bytes([97 + i]) for i in range(10)))  # a..j
    await _edit(backend, s + 5, None)  # f gone
    version = (await _state(backend)).version

    async def page(before: int | None = None, after: int | None = None, limit: int = 3) -> Any:
        got = await backend.read_range("s", before=before, after=after, limit=limit, touch=None)
        assert got.version == version and got.length == 9
        return list(zip(got.seqs(), got.entries, strict=True))

    assert await page() == [(s + 7, b"h"), (s + 8, b"i"), (s + 9, b"j")]
    assert await page(before=s + 7) == [(s + 3, b"d"), (s + 4, b"e"), (s + 6, b"g")]
    assert await page(before=s + 6) == [(s + 2, b"c"), (s + 3, b"d"), (s + 4, b"e")]
    assert await page(before=s + 5) == [(s + 2, b"c"), (s + 3, b"d"), (s + 4, b"e")]
    assert await page(before=s + 2) == [(s, b"a"), (s + 1, b"b")]
    assert await page(before=s) == []
    assert await page(after=s + 2) == [(s + 3, b"d"), (s + 4, b"e"), (s + 6, b"g")]
    assert await page(after=s + 4, limit=1) == [(s + 6, b"g")]
    assert await page(after=s + 8, limit=5) == [(s + 9, b"j")]
    assert await page(after=s + 9) == []
    assert await page(after=s - 5, limit=2) == [(s, b"a"), (s + 1, b"b")]
    assert await page(before=s + 100, limit=1) == [(s + 9, b"j")]
    none = await backend.read_range("nobody", before=None, after=None, limit=3, touch=None)
    assert (none.entries, none.version) == ([], 0)


async def test_a_page_read_refreshes_a_sliding_expiry(backend: Any) -> None:
    await backend.append("s", [b"a"], max_entries=None, ttl=5.0, write_id=_id(), fence=None)
    await backend.read_range("s", before=None, after=None, limit=1, touch=500.0)
    left = await backend.time_left("s")
    assert left is not False and left is not None and left > 100


async def test_a_save_numbers_on_after_every_number_given(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c")
    await backend.pop("s", 1, write_id=_id(), fence=None)
    await backend.replace(
        "s", [b"x", b"y"], summary=None, ttl=None, overwrite=True, write_id=_id(), fence=None
    )
    assert await _numbered(backend) == [(s + 3, b"x"), (s + 4, b"y")]
    await _append(backend, b"z")
    assert await _numbered(backend) == [(s + 3, b"x"), (s + 4, b"y"), (s + 5, b"z")]


async def test_a_read_of_the_newest_gives_their_numbers(backend: Any) -> None:
    s = await _start(backend, b"a", b"b", b"c", b"d")
    await _edit(backend, s + 2, None)
    page = await backend.read("s", limit=2, summary=False, touch=None, numbers=True)
    assert (page.entries, page.seqs(), page.first_seq) == ([b"b", b"d"], [s + 1, s + 3], s + 1)


async def test_a_fold_after_gaps_covers_what_it_read(backend: Any) -> None:
    """The store core names a fold's end by the number after its last message, not by
    counting from the first: with gaps, counting would leave a folded message in place."""
    from chatstate import Message
    from chatstate.stores import BackendStore

    store: BackendStore[Any] = BackendStore(backend)
    texts = ["a", "b", "c", "d", "e", "f", "g"]
    await store.append("s", [Message(role="user", content=t) for t in texts])
    ids = (await store.history("s")).ids
    await store.delete_message("s", ids[2])  # c
    await store.delete_message("s", ids[3])  # d
    await store.delete_message("s", ids[4])  # e: a, b, f, g left

    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        return 3, Message(role="system", content="".join(m.text for m in history[:3]))

    assert await store.compact("s", fold)
    messages, summary = await store.load_with_summary("s")
    assert [m.text for m in messages] == ["g"]
    assert summary is not None and summary.text == "abf"
