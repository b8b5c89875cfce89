"""Leases fence the writes made under them: a holder that lost its lease (it stalled past the
lease's ttl, and another instance took it) stores nothing, on every backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from chatstate import (
    LeaseLostError,
    Message,
    Pipeline,
    ProviderMiddleware,
    RedisStateStore,
    ScriptedProvider,
    SQLiteStateStore,
    StateMiddleware,
    StateMiddlewareConfig,
)
from chatstate.stores import BackendStore, SessionSnapshot
from chatstate.stores._writes import new_write_id

from .test_conformance import Backend
from .test_conformance import backend as backend  # the fixture: every kind
from .test_leases import stores as stores  # two Redis stores: two app instances


def _user(text: str) -> Message:
    return Message(role="user", content=text)


_WRITES: dict[str, Callable[[BackendStore[Any]], Awaitable[object]]] = {
    "append": lambda store: store.append("s", [_user("stale")]),
    "save": lambda store: store.save("s", [_user("stale")]),
    "delete": lambda store: store.delete("s"),
    "restore": lambda store: store.restore("s", SessionSnapshot([_user("stale")]), overwrite=True),
}


@pytest.mark.parametrize("write", list(_WRITES))
async def test_a_write_under_a_lost_lease_is_refused_and_stores_nothing(
    backend: Backend, write: str
) -> None:
    store: BackendStore[Any] = backend.store  # type: ignore[assignment]
    await store.append("s", [_user("before")])
    with pytest.raises(LeaseLostError, match="nothing was written"):
        async with store.lease("s", ttl=30, timeout=1) as lease:
            await store.append("s", [_user("while held")])  # the fence holds: stored
            # The lease runs out and another instance takes it (and appends).
            assert await store.backend.release_lease("s", lease.token)
            assert await store.backend.acquire_lease("s", "another-holder", 30)
            await store.backend.append(
                "s", await _entries(store, "the other's"), max_entries=None, ttl=None,
                write_id=new_write_id(), fence="another-holder",
            )  # fmt: skip
            await _WRITES[write](store)
    assert [message.text for message in await store.load("s")] == [
        "before",
        "while held",
        "the other's",
    ]
    # Outside the lease, writes carry no fence.
    await store.append("s", [_user("after")])
    assert len(await store.load("s")) == 4


async def _entries(store: BackendStore[Any], text: str) -> Sequence[Any]:
    return store._codec.encode([_user(text)], session_id="s")


# Two instances, one stalled: the scenario of a lease that does not fence ----------------------


class _Stall:
    """A provider that holds its first turn until told to go on, and says how much history
    each turn was given."""

    def __init__(self, *, stall: bool = True) -> None:
        self.started = anyio.Event()
        self.go = anyio.Event()
        self.stall = stall

    async def __call__(self, messages: Sequence[Message]) -> str:
        if self.stall:
            self.stall = False
            self.started.set()
            await self.go.wait()
        return f"saw {len(messages) - 1}"


async def _two_instances_one_stalled(
    first: BackendStore[Any], second: BackendStore[Any], expire: Callable[[], Awaitable[None]]
) -> None:
    config = StateMiddlewareConfig(lease_ttl=timedelta(seconds=30))
    stall = _Stall()
    stalled = Pipeline(StateMiddleware(first, config), ProviderMiddleware(ScriptedProvider(stall)))
    other = Pipeline(
        StateMiddleware(second, config), ProviderMiddleware(ScriptedProvider(_Stall(stall=False)))
    )
    failures: list[BaseException] = []

    async def stalled_turn() -> None:
        try:
            await stalled.execute_with_session("s", "user", "from the stalled one")
        except LeaseLostError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(stalled_turn)
        await stall.started.wait()
        await expire()  # its lease ran out (the holder stalled), and
        await other.execute_with_session("s", "user", "from the other one")  # was taken
        stall.go.set()
    assert len(failures) == 1
    history = await second.load("s")
    # The other's turn alone, and it saw nothing of the stalled one's (which stored nothing).
    assert [message.text for message in history] == ["from the other one", "saw 0"]


async def test_a_stalled_redis_holder_stores_nothing(stores: list[RedisStateStore]) -> None:
    first, second = stores  # two instances

    async def expire() -> None:  # as the server does when the ttl passes unrenewed
        await first.client.delete(first.key("s", "lease"))

    await _two_instances_one_stalled(first, second, expire)


async def test_a_stalled_sqlite_holder_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteStateStore(path) as first, SQLiteStateStore(path) as second:

        async def expire() -> None:
            import sqlite3

            with sqlite3.connect(path) as raw:
                raw.execute("UPDATE chatstate_leases SET expires_at = 0")

        await _two_instances_one_stalled(first, second, expire)
