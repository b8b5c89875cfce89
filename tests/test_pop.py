"""The backends' optional pop: the newest entries removed and returned in one atomic step, a
write like the others (write id, fence, version, generation)."""

from __future__ import annotations

from typing import Any

import pytest

from chatstate.stores import Fenced


async def _append(backend: Any, session: str, *entries: bytes, write_id: str) -> None:
    await backend.append(
        session, list(entries), max_entries=None, ttl=None, write_id=write_id, fence=None
    )


async def _numbers(backend: Any, session: str) -> tuple[list[bytes], int, int, int]:
    page = await backend.read(session, limit=None, summary=False, touch=None, numbers=True)
    return page.entries, page.first_seq, page.version, page.generation


async def test_pop_removes_and_returns_the_newest_entries_oldest_first(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", b"d", write_id="1" * 16)
    _, first, version, generation = await _numbers(backend, "s")
    popped = await backend.pop("s", 2, write_id="2" * 16, fence=None)
    assert popped.entries == [b"c", b"d"]
    assert (popped.length, popped.applied) == (2, True)
    assert popped.version == version + 1
    after, first_after, version_after, generation_after = await _numbers(backend, "s")
    assert after == [b"a", b"b"] and first_after == first
    assert version_after == version + 1
    assert generation_after != generation  # not an append: a new generation
    await _append(backend, "s", b"e", write_id="3" * 16)
    page = await backend.read("s", limit=None, summary=False, touch=None, numbers=True)
    assert page.entries == [b"a", b"b", b"e"]
    assert page.seqs() == [first, first + 1, first + 4]  # the numbers it freed stay unused


async def test_a_pop_that_empties_the_session_deletes_it(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", write_id="1" * 16)
    popped = await backend.pop("s", 5, write_id="2" * 16, fence=None)
    assert (popped.entries, popped.length, popped.version) == ([b"a", b"b"], 0, 0)
    assert await backend.time_left("s") is False
    assert (await _numbers(backend, "s"))[2] == 0  # no session: version 0


async def test_a_pop_of_no_session_is_empty(backend: Any) -> None:
    popped = await backend.pop("none", 1, write_id="2" * 16, fence=None)
    assert (popped.entries, popped.length, popped.version) == ([], 0, 0)


async def test_a_retried_pop_is_not_applied_again(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", write_id="1" * 16)
    first = await backend.pop("s", 1, write_id="2" * 16, fence=None)
    again = await backend.pop("s", 1, write_id="2" * 16, fence=None)
    assert first.entries == [b"c"] and first.applied
    assert not again.applied and again.length == 2
    if backend.name == "redis":  # the script keeps what the session's last pop removed
        assert again.entries == [b"c"]
    else:
        assert again.entries == []
    assert (await _numbers(backend, "s"))[0] == [b"a", b"b"]


async def test_a_retry_of_the_pop_that_emptied_the_session_removes_nothing_new(
    backend: Any,
) -> None:
    await _append(backend, "s", b"a", write_id="1" * 16)
    await backend.pop("s", 1, write_id="2" * 16, fence=None)
    await _append(backend, "s", b"b", write_id="3" * 16)
    again = await backend.pop("s", 1, write_id="2" * 16, fence=None)
    assert not again.applied
    assert (await _numbers(backend, "s"))[0] == [b"b"]


async def test_a_fenced_pop_removes_nothing(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", write_id="1" * 16)
    assert await backend.acquire_lease("s", "holder", 30.0)
    with pytest.raises(Fenced):
        await backend.pop("s", 1, write_id="2" * 16, fence="someone-else")
    assert (await _numbers(backend, "s"))[0] == [b"a", b"b"]
    popped = await backend.pop("s", 1, write_id="4" * 16, fence="holder")
    assert popped.entries == [b"b"]


async def test_a_fold_read_before_a_pop_is_refused(backend: Any) -> None:
    await _append(backend, "s", b"a", b"b", b"c", write_id="1" * 16)
    _, first, _, generation = await _numbers(backend, "s")
    await backend.pop("s", 1, write_id="2" * 16, fence=None)
    await _append(backend, "s", b"d", write_id="3" * 16)
    done = await backend.compact(
        "s", generation=generation, before_seq=first + 3, summary=b"sum", write_id="5" * 16
    )
    assert not done
    assert (await _numbers(backend, "s"))[0] == [b"a", b"b", b"d"]
