"""The store core: one event per operation through every method, errors mapped once, leases that
cancel a turn whose lease ran out, compaction by sequence number."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from chatstate import (
    LeaseLostError,
    LeaseTimeoutError,
    Message,
    StateLoadError,
    StateSaveError,
    WrongTypeError,
)
from chatstate.stores import BackendStore, InMemoryStateStore, SessionSnapshot, StoreEvent

from .conftest import FakeClock
from .dict_backend import DictBackend


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _reply(text: str) -> Message:
    return Message(role="assistant", content=text)


def _stores(clock: FakeClock) -> list[BackendStore[Any]]:
    return [InMemoryStateStore(clock=clock), BackendStore(DictBackend(clock))]


@pytest.fixture(params=["memory", "third-party"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> BackendStore[Any]:
    made: BackendStore[Any] = dict(zip(["memory", "third-party"], _stores(clock), strict=True))[
        request.param
    ]
    return made


async def _fold_two(history: list[Message], summary: Message | None) -> tuple[int, Message]:
    return 2, _reply("summary")


async def test_every_operation_emits_one_event(store: BackendStore[Any]) -> None:
    events: list[StoreEvent] = []
    store.add_hook(events.append)
    await store.append("s", [_user("a"), _reply("b")], max_messages=3, ttl=60)
    await store.append_versioned("s", [_user("c"), _reply("d")], max_messages=3)
    await store.load("s")
    await store.load_with_summary("s", limit=2)
    await store.load_versioned("s")
    await store.version("s")
    assert await store.compact("s", _fold_two)
    snapshot = await store.snapshot("s")
    assert snapshot is not None
    await store.restore("copy", snapshot)
    await store.save("s", [_user("x")])
    async with store.lease("s", ttl=5, timeout=1):
        pass
    await store.index_conversation("u", "c1", now=1.0, ttl=None)
    await store.delete("s")
    seen = [(event.operation, event.session_id, event.messages) for event in events]
    assert seen == [
        ("append", "s", 2),
        ("append", "s", 2),
        ("load", "s", 3),
        ("load", "s", 2),
        ("load", "s", 3),
        ("version", "s", 0),
        ("compact", "s", 2),
        ("snapshot", "s", 1),
        ("restore", "copy", 1),
        ("save", "s", 1),
        ("lease", "s", 0),
        ("index", "u", 0),
        ("delete", "s", 0),
    ]
    assert events[1].trimmed and not events[0].trimmed
    assert all(event.error is None and event.seconds >= 0 for event in events)
    assert all(event.seconds > 0 for event in events if event.operation != "version")
    store.remove_hook(events.append)
    await store.load("s")
    assert len(events) == len(seen)


async def test_metrics_count_every_read_and_write_whatever_the_method(
    store: BackendStore[Any],
) -> None:
    await store.append("s", [_user("a")])
    await store.append_versioned("s", [_reply("b")])
    await store.load("s")
    await store.load_with_summary("s")
    await store.load_versioned("s")
    snapshot = await store.snapshot("s")
    assert snapshot is not None
    await store.restore("t", snapshot)
    await store.save("u", [_user("c")])
    metrics = await store.metrics()
    assert (metrics.appends, metrics.loads, metrics.saves) == (2, 4, 2)
    assert metrics.active_sessions == 3 and metrics.errors == 0


class _Broken(DictBackend):
    """Fails every write as a networked backend would: its own exception, mapped by kind."""

    def __init__(self, clock: FakeClock, kind: str) -> None:
        super().__init__(clock)
        self.kind = kind

    async def append(self, session_id: str, entries: Sequence[bytes], **options: Any) -> Any:
        raise ConnectionError("the server went away")

    async def read(self, session_id: str, **options: Any) -> Any:
        raise ConnectionError("the server went away")

    async def delete(self, session_id: str, **options: Any) -> bool:
        raise ConnectionError("WRONGTYPE")

    def error_kind(self, exc: Exception) -> Any:
        if str(exc) == "WRONGTYPE":
            return "wrong_type"
        return self.kind if isinstance(exc, ConnectionError) else None


async def test_a_backend_error_is_mapped_once_reported_and_counted(clock: FakeClock) -> None:
    store = BackendStore(_Broken(clock, "unavailable"))
    events: list[StoreEvent] = []
    store.add_hook(events.append)
    turn = [_user("a"), _reply("b")]
    with pytest.raises(StateSaveError) as saving:
        await store.append("s", turn)
    assert type(saving.value) is StateSaveError  # unavailable: certainly not applied
    assert saving.value.messages == tuple(turn) and saving.value.session_id == "s"
    assert saving.value.write_id is not None and "nothing was written" in str(saving.value)
    assert isinstance(saving.value.__cause__, ConnectionError)
    with pytest.raises(StateLoadError, match="went away"):
        await store.load("s")
    with pytest.raises(WrongTypeError):
        await store.delete("s")
    assert [(event.operation, type(event.error)) for event in events] == [
        ("append", ConnectionError),
        ("load", ConnectionError),
        ("delete", ConnectionError),
    ]
    metrics = await store.metrics()
    assert (metrics.errors, metrics.loads, metrics.appends, metrics.deletes) == (3, 0, 0, 0)


async def test_an_error_that_is_not_the_backends_goes_through_unchanged(clock: FakeClock) -> None:
    store = BackendStore(_Broken(clock, "unavailable"))
    store.backend.error_kind = lambda exc: None  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await store.load("s")


async def test_a_hook_that_raises_is_logged_and_the_call_goes_on(
    store: BackendStore[Any], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: StoreEvent) -> None:
        raise RuntimeError("hook bug")

    store.add_hook(broken)
    store.add_hook(lambda event: calls.append(event.operation))
    with caplog.at_level(logging.ERROR, logger="chatstate"):
        assert await store.append("s", [_user("a")]) == 1
    assert calls == ["append"]
    assert "hook" in caplog.text and "hook bug" in caplog.text


async def test_a_fold_keeps_repeated_messages_by_sequence_number(store: BackendStore[Any]) -> None:
    """The same message object (or bytes) six times: what the fold covers is named by number,
    so a trim and an append while it ran leave exactly the right ones."""
    ping, pong = _user("ping"), _reply("pong")
    await store.append("s", [ping, pong] * 3)

    async def fold_while_a_turn_trims(history: list[Message], summary: Any) -> Any:
        await store.append("s", [ping, pong], max_messages=6)  # trims the two oldest
        return 4, _reply("four folded")

    assert await store.compact("s", fold_while_a_turn_trims)
    # Read 0-5, folded 0-3; the turn trimmed 0-1 and added 6-7: 4-7 stay.
    assert await store.load_with_summary("s") == ([ping, pong] * 2, _reply("four folded"))


async def test_a_fold_changes_nothing_if_the_session_was_saved_meanwhile(
    store: BackendStore[Any],
) -> None:
    await store.append("s", [_user("a"), _reply("b"), _user("c")])

    async def fold_while_saved(history: list[Message], summary: Any) -> Any:
        await store.save("s", [_user("new")])
        return 2, _reply("stale summary")

    assert not await store.compact("s", fold_while_saved)
    assert await store.load_with_summary("s") == ([_user("new")], None)


async def test_a_lease_that_runs_out_cancels_its_turn_and_raises(clock: FakeClock) -> None:
    backend = DictBackend(clock)
    store = BackendStore(backend, clock=clock)
    reached_the_end = False
    with pytest.raises(LeaseLostError, match="ran out"):
        async with store.lease("s", ttl=30, timeout=1):
            backend._leases["s"] = ("another holder", clock() + 60)  # taken over
            await clock.sleeping()  # the renewer waits for its first third of the ttl
            clock.advance(10)  # the first renewal falls due: it finds the lease taken
            await anyio.Event().wait()  # the turn goes on, until it is cancelled
            reached_the_end = True
    assert not reached_the_end
    assert backend._leases["s"][0] == "another holder"  # never released: not ours


async def test_a_lease_renewed_on_time_is_held_for_as_long_as_the_turn_runs(
    clock: FakeClock,
) -> None:
    backend = DictBackend(clock)
    store = BackendStore(backend, clock=clock)
    async with store.lease("s", ttl=30, timeout=1):
        await clock.sleeping()  # the renewer waits for its first third of the ttl
        for _ in range(10):  # 100 s: three ttls over, each third renewed
            clock.advance(10)
            await clock.sleeping()  # the renewer renewed and waits for the next third
        assert not await DictBackend.acquire_lease(backend, "s", "someone else", 30)
    assert await DictBackend.acquire_lease(backend, "s", "someone else", 30)  # given back


async def test_a_lease_wait_times_out_on_the_clock(clock: FakeClock) -> None:
    backend = DictBackend(clock)
    store = BackendStore(backend, clock=clock)
    assert await backend.acquire_lease("s", "another process", 300)
    raised: list[LeaseTimeoutError] = []

    async def take() -> None:
        try:
            async with store.lease("s", ttl=30, timeout=5):
                raise AssertionError("never taken")
        except LeaseTimeoutError as exc:
            raised.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(take)
        await clock.sleeping()  # polling the backend, with backoff
        clock.advance(5)
    assert len(raised) == 1 and "more than 5 s" in str(raised[0])


async def test_cancelled_while_taking_a_lease_gives_back_what_it_took(clock: FakeClock) -> None:
    """The backend grants the lease but its reply never arrives (the caller is cancelled while
    waiting for it): the lease must not stay held by nobody until its ttl."""
    granted = anyio.Event()

    class LostReply(DictBackend):
        async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
            await super().acquire_lease(session_id, token, ttl)
            granted.set()
            await anyio.sleep(60)  # the reply, lost
            return True

    backend = LostReply(clock)
    store = BackendStore(backend)
    async with anyio.create_task_group() as group:

        async def take() -> None:
            async with store.lease("s", ttl=30, timeout=10):
                raise AssertionError("never taken")

        group.start_soon(take)
        await granted.wait()
        group.cancel_scope.cancel()
    assert "s" not in backend._leases
    assert await DictBackend.acquire_lease(backend, "s", "the next turn", 30)  # free at once


async def test_a_restore_over_an_existing_session_writes_nothing(store: BackendStore[Any]) -> None:
    await store.append("s", [_user("kept")])
    assert not await store.restore("s", SessionSnapshot([_user("other")]))
    assert await store.load("s") == [_user("kept")]
