"""The Redis backend's numbers against a model: random appends (some trimming), pops, edits,
truncations, folds, restores (with numbers or without) and pages on one session, each read and
snapshot compared with a list of (number, entry) pairs; and the Python side's arithmetic
(:mod:`chatstate.stores.redis._numbering`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from redis.asyncio import Redis

from chatstate import RedisStateStore
from chatstate.stores import Written
from chatstate.stores.redis._backend import RedisBackend
from chatstate.stores.redis._numbering import gaps_text, numbers_of, parse_gaps
from chatstate.testing.redis_server import RedisServer

from .conftest import examples, kinds
from .test_redis_numbering import _append, _edit, _numbered, _replace, _wid

T = TypeVar("T")


def test_numbers_of_counts_across_gaps() -> None:
    # Entries 2 3 _ _ 6 _ 8 (tail 9): gaps 4-5 and 7.
    gaps = b"4:2,1:1"
    assert parse_gaps(gaps) == [(4, 2), (7, 1)]
    assert numbers_of(9, 4, gaps, 0, 4) == [2, 3, 6, 8]
    assert numbers_of(9, 4, gaps, 1, 2) == [3, 6]
    assert numbers_of(9, 4, gaps, 3, 1) == [8]
    assert numbers_of(9, 4, b"", 0, 4) == [5, 6, 7, 8]
    assert gaps_text([2, 3, 6, 8]) == "4:2,1:1" and gaps_text([5, 6]) == ""


@given(st.lists(st.integers(0, 200), min_size=1, max_size=30, unique=True))
def test_gaps_text_is_what_numbers_of_reads_back(numbers: list[int]) -> None:
    numbers.sort()
    text = gaps_text(numbers).encode()
    assert numbers_of(numbers[-1] + 1, len(numbers), text, 0, len(numbers)) == numbers


class _Numbering(RuleBasedStateMachine):
    """Random appends (some trimming), pops, edits and folds on one session, against a list of
    (number, entry) pairs: every read and page numbers exactly what the model says."""

    sync: Any
    backend: RedisBackend

    def __init__(self) -> None:
        super().__init__()
        self.model: list[tuple[int, bytes]] = []
        self.tail = 0
        self.made = 0

    @initialize(count=st.integers(0, 10))
    def start(self, count: int) -> None:
        # A session of its own, with some entries (else most steps find none: pops empty it).
        self.sync(self.backend.delete("s", write_id=_wid(), fence=None))
        if count:
            self.append(count, None)

    def _new(self, count: int) -> list[bytes]:
        self.made += count
        return [f"n{self.made - count + index}".encode() for index in range(count)]

    @rule(count=st.integers(1, 4), keep=st.none() | st.integers(1, 10))
    def append(self, count: int, keep: int | None) -> None:
        entries = self._new(count)
        if not self.model:
            self.tail = 0  # a deleted session numbers from 0
        self.model += [(self.tail + index, entry) for index, entry in enumerate(entries)]
        self.tail += count
        if keep is not None:
            self.model = self.model[-keep:]
        self.sync(_append(self.backend, *entries, keep=keep))

    @rule(count=st.integers(1, 3))
    def pop(self, count: int) -> None:
        count = min(count, max(1, len(self.model) - 1))  # rarely empties (tested above)
        popped = self.sync(self.backend.pop("s", count, write_id=_wid(), fence=None))
        assert popped.entries == [entry for _, entry in self.model[-count:]]
        del self.model[-count:]

    @rule(pick=st.integers(0, 20), offset=st.integers(-1, 1), replace=st.booleans())
    def edit(self, pick: int, offset: int, replace: bool) -> None:
        self._edit(pick, offset, replace, truncate=False)

    @rule(pick=st.integers(1, 20), replace=st.booleans())
    def truncate(self, pick: int, replace: bool) -> None:
        if len(self.model) > 1:  # rarely empties (tested above)
            self._edit(1 + pick % (len(self.model) - 1), 0, replace, truncate=True)

    def _edit(self, pick: int, offset: int, replace: bool, *, truncate: bool) -> None:
        seqs = [seq for seq, _ in self.model]
        seq = seqs[pick % len(seqs)] + offset if seqs else pick
        entry = self._new(1)[0] if replace else None
        outcome = self.sync(_edit(self.backend, seq, entry, truncate=truncate))
        if seq not in seqs:
            assert outcome == "missing"
            return
        index = seqs.index(seq)
        kept = self.model[:index] + ([(seq, entry)] if entry is not None else [])
        self.model = kept + ([] if truncate else self.model[index + 1 :])
        assert isinstance(outcome, Written) and outcome.length == len(self.model)

    @rule(
        count=st.integers(1, 4),
        numbers=st.none() | st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True),
    )
    def restore(self, count: int, numbers: list[int] | None) -> None:
        # With numbers: exactly those, the next number after them or after the old tail.
        entries = self._new(count if numbers is None else len(numbers))
        old_tail = self.tail if self.model else 0
        if numbers is None:
            numbers = list(range(old_tail, old_tail + count))
            self.sync(_replace(self.backend, entries, None))
        else:
            numbers.sort()
            self.sync(_replace(self.backend, entries, numbers))
        self.model = list(zip(numbers, entries, strict=True))
        self.tail = max(numbers[-1] + 1, old_tail)

    @rule(pick=st.integers(0, 20))
    def fold(self, pick: int) -> None:
        if len(self.model) < 2:
            return
        page = self.sync(
            self.backend.read("s", limit=None, summary=False, touch=None, numbers=True)
        )
        before = self.model[1 + pick % (len(self.model) - 1)][0]
        done = self.sync(
            self.backend.compact(
                "s", generation=page.generation, before_seq=before, summary=b"s", write_id=_wid()
            )
        )
        assert done
        self.model = [(seq, entry) for seq, entry in self.model if seq >= before]

    @rule(
        limit=st.integers(1, 4),
        pick=st.integers(0, 20),
        offset=st.integers(-3, 3),
        direction=st.sampled_from("ban"),
    )
    def page(self, limit: int, pick: int, offset: int, direction: str) -> None:
        # Near an entry's number: in the gaps around it, or past either end.
        at = (self.model[pick % len(self.model)][0] if self.model else pick) + offset
        before = at if direction == "b" else None
        after = at if direction == "a" else None
        got = self.sync(
            self.backend.read_range("s", before=before, after=after, limit=limit, touch=None)
        )
        if direction == "b":
            expected = [pair for pair in self.model if pair[0] < at][-limit:]
        elif direction == "a":
            expected = [pair for pair in self.model if pair[0] > at][:limit]
        else:
            expected = self.model[-limit:]
        assert list(zip(got.seqs(), got.entries, strict=True)) == expected

    @invariant()
    def numbered_as_the_model(self) -> None:
        assert self.sync(_numbered(self.backend)) == self.model
        raw = self.sync(self.backend.snapshot("s"))
        assert (raw.numbers if raw else []) == [seq for seq, _ in self.model]
        if self.model:
            seqs = [seq for seq, _ in self.model]
            page = self.sync(
                self.backend.read("s", limit=2, summary=False, touch=None, numbers=True)
            )
            assert page.seqs() == seqs[-2:] and page.first_seq == seqs[-2:][0]


@pytest.mark.parametrize("kind", kinds("fakeredis", "redis"))
def test_numbers_match_a_model(kind: str, request: pytest.FixtureRequest) -> None:
    loop = asyncio.new_event_loop()

    def run(awaitable: Awaitable[T]) -> T:
        return loop.run_until_complete(awaitable)  # type: ignore[arg-type]

    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client: Any = Redis.from_url(server.url)
    else:
        client = fakeredis.FakeAsyncRedis()
    store = RedisStateStore(client, prefix=request.getfixturevalue("key_prefix"))
    _Numbering.sync = staticmethod(run)  # type: ignore[assignment]
    _Numbering.backend = store.backend
    try:
        _Numbering.TestCase.settings = settings(
            max_examples=examples(60),
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        _Numbering.TestCase().runTest()
    finally:
        run(store.aclose())
        run(client.aclose())
        loop.close()
