"""What the in-memory store does beyond the conformance suite: LRU cap, sweeps, its own config."""

from __future__ import annotations

import asyncio
import gc
import itertools
import tracemalloc
import weakref

import pytest

from chatstate import ConfigurationError, InMemoryStateStore, Message
from chatstate.stores._memory_backend import MemoryBackend

from .conftest import FakeClock


def _msg(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


async def test_least_recently_used_sessions_are_evicted_at_the_cap() -> None:
    store = InMemoryStateStore(max_sessions=3)
    for name in "abc":
        await store.append(name, _msg(name))
    await store.load("a")  # a is now the most recently used; b the least
    await store.append("d", _msg("d"))
    assert await store.load("b") == []
    assert [await store.load(name) for name in "acd"] == [_msg("a"), _msg("c"), _msg("d")]
    assert store.sessions_in_memory == 3
    assert store.evictions == 1


async def test_expired_sessions_are_reclaimed_by_a_sweep(clock: FakeClock) -> None:
    store = InMemoryStateStore(clock=clock, sweep_interval=None)
    for index in range(2500):
        await store.append(f"s{index}", _msg("x"), ttl=10 if index % 2 else 100)
    await store.append("forever", _msg("x"))
    clock.advance(11)
    assert store.sessions_in_memory == 2501  # expired, but not yet reclaimed
    assert await store.sweep() == 1250
    assert store.sessions_in_memory == 1251
    assert store.expirations == 1250
    clock.advance(100)
    assert await store.sweep() == 1250
    assert store.sessions_in_memory == 1
    assert await store.load("forever") == _msg("x")


async def test_a_sweep_keeps_sessions_whose_ttl_was_refreshed(clock: FakeClock) -> None:
    store = InMemoryStateStore(clock=clock, sweep_interval=None)
    await store.append("s", _msg("1"), ttl=10)
    clock.advance(8)
    await store.append("s", _msg("2"), ttl=10)
    clock.advance(8)
    assert await store.sweep() == 0
    assert await store.load("s") == _msg("1") + _msg("2")
    clock.advance(3)  # past the refreshed expiry: the sweep that kept it swept it now
    assert await store.sweep() == 1
    assert store.sessions_in_memory == 0


async def test_a_sweep_reclaims_sessions_whose_ttl_was_shortened_or_removed(
    clock: FakeClock,
) -> None:
    store = InMemoryStateStore(clock=clock, sweep_interval=None)
    await store.append("shortened", _msg("1"), ttl=100)
    await store.append("shortened", _msg("2"), ttl=5)
    await store.append("kept", _msg("1"), ttl=5)
    await store.append("kept", _msg("2"))  # no ttl: never expires now
    await store.append("kept", _msg("3"), ttl=50)  # and an expiry again, later
    clock.advance(6)
    assert await store.sweep() == 1
    assert await store.load("shortened") == []
    assert await store.load("kept") == _msg("1") + _msg("2") + _msg("3")
    clock.advance(50)
    assert await store.sweep() == 1
    assert store.sessions_in_memory == 0


async def test_sweeping_yields_to_the_event_loop_between_chunks(clock: FakeClock) -> None:
    store = InMemoryStateStore(clock=clock, sweep_interval=None)
    for index in range(5000):
        await store.append(f"s{index}", _msg("x"), ttl=1)
    clock.advance(2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    assert await store.sweep() == 5000
    task.cancel()
    assert ticks >= 4  # the loop ran other tasks while 5,000 sessions were swept in chunks


async def test_the_expiry_index_stays_bounded_under_repeated_refreshes(clock: FakeClock) -> None:
    store = InMemoryStateStore(clock=clock, sweep_interval=None)
    for _ in range(20_000):
        await store.append("hot", _msg("x"), ttl=60, max_messages=1)
    assert len(store.backend._expiry_heap) <= 2 * store.sessions_in_memory + 1024


async def test_writes_sweep_the_expired_sessions_once_per_interval(clock: FakeClock) -> None:
    store = InMemoryStateStore(clock=clock, sweep_interval=10)
    for index in range(5):
        await store.append(f"old{index}", _msg("x"), ttl=1)  # the first write swept (nothing)
    clock.advance(5)
    await store.append("new", _msg("x"), ttl=60)  # expired, but no sweep is due yet
    assert store.sessions_in_memory == 6 and store.expirations == 0
    clock.advance(6)
    await store.append("newer", _msg("x"), ttl=60)  # due: this write reclaims them
    assert store.sessions_in_memory == 2 and store.expirations == 5


async def test_a_store_runs_no_task_of_its_own() -> None:
    before = asyncio.all_tasks()
    store = InMemoryStateStore(sweep_interval=0.01)
    await store.append("s", _msg("x"), ttl=60)
    async with store.lease("s", ttl=5, timeout=1):
        pass
    assert asyncio.all_tasks() == before  # nothing that could outlive the store
    ref = weakref.ref(store)
    del store
    gc.collect()
    assert ref() is None


async def test_returned_lists_share_the_immutable_messages() -> None:
    store = InMemoryStateStore()
    message = Message(role="user", content="x", metadata={"k": [1]})
    await store.append("s", [message])
    loaded = await store.load("s")
    assert loaded[0] is message  # no deep copy: it cannot change anyway
    assert loaded is not await store.load("s")


async def test_the_backends_awaited_append_is_its_plain_append_now() -> None:
    # The core calls append_now; the Backend protocol's append must give the same, as Written.
    awaited, plain = MemoryBackend(), MemoryBackend()
    calls = [("s", ["a", "b"], 3, 60.0, "w1"), ("s", ["c", "d"], 3, 60.0, "w2")]
    calls += [("s", ["c", "d"], 3, 60.0, "w2"), ("s", ["e"], None, None, "w3")]  # w2: a retry
    results: list[tuple[int, int, bool, bool]] = []
    for session_id, entries, bound, ttl, write_id in calls:
        written = await awaited.append(
            session_id, entries, max_entries=bound, ttl=ttl, write_id=write_id, fence=None
        )
        now = plain.append_now(session_id, entries, bound, ttl, write_id, None)
        assert (written.length, written.trimmed, written.applied) == (now[0], now[2], now[3])
        results.append((written.version, now[1], written.length, written.applied))
    # Versions start at random: both go up by one per applied write, and a retry leaves them.
    assert [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(results)] == [
        (1, 1),
        (0, 0),
        (1, 1),
    ]
    assert [(length, applied) for *_, length, applied in results] == [
        (2, True),
        (3, True),
        (3, False),
        (4, True),
    ]
    assert awaited.entries_now("s", None) == plain.entries_now("s", None) == ["b", "c", "d", "e"]


@pytest.mark.parametrize(
    "options",
    [{"max_sessions": 0}, {"max_sessions": "10"}, {"sweep_interval": 0}, {"sweep_interval": -1}],
    ids=repr,
)
def test_bad_store_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        InMemoryStateStore(**options)  # type: ignore[arg-type]


def test_repr_names_the_size() -> None:
    assert (
        repr(InMemoryStateStore(max_sessions=5)) == "InMemoryStateStore(sessions=0, max_sessions=5)"
    )


@pytest.mark.slow  # 120,000 appends under tracemalloc: about 4 s
async def test_memory_stays_bounded_through_ten_minutes_of_simulated_traffic(
    clock: FakeClock,
) -> None:
    """Ten simulated minutes: 100 new sessions a second, each a few turns with a 30 s TTL, and
    returning users. The session cap and the sweep keep the heap flat."""
    store = InMemoryStateStore(max_sessions=2_000, sweep_interval=None, clock=clock)
    turn = [Message(role="user", content="q" * 100), Message(role="assistant", content="a" * 100)]
    tracemalloc.start()
    try:
        plateau = 0
        for second in range(600):
            for index in range(100):
                session_id = f"user-{second}-{index}"
                await store.append(session_id, turn, max_messages=20, ttl=30)
                await store.append(f"returning-{index}", turn, max_messages=20, ttl=30)
            clock.advance(1)
            if second % 5 == 4:
                await store.sweep()  # what the background sweep does every sweep_interval
            assert store.sessions_in_memory <= 2_000
            assert len(store.backend._expiry_heap) <= 2 * store.sessions_in_memory + 1024
            if second == 60:
                plateau = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - plateau
    finally:
        tracemalloc.stop()
    assert store.evictions + store.expirations >= 600 * 100 - 2_000
    assert grown < 0.2 * plateau  # flat after the first minute, not growing with traffic
    assert await store.load("returning-7") == turn * 10  # the busy sessions were kept
    await store.aclose()
