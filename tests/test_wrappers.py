"""Every wrapper of a store has the optional protocols of the store it wraps, and only those,
where ``isinstance`` looks for them: on the class (``inspect.getattr_static``, which Python 3.12
and later use for runtime-checkable protocols), not through ``__getattr__``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chatstate import InMemoryStateStore, Message
from chatstate.stores.base import (
    TTL,
    SessionLeases,
    SessionSnapshot,
    SessionSummaries,
    SessionTransfer,
    VersionedStore,
)
from chatstate.stores.cached import CachedStore
from chatstate.stores.encrypted import EncryptedStore
from chatstate.stores.sqlite import SQLiteStateStore
from chatstate.transfer import fork_session

PROTOCOLS = (SessionSummaries, VersionedStore, SessionLeases, SessionTransfer)
KEYS = {"k": b"k" * 32}


class PlainStore:
    """A store with the core protocol only."""

    def __init__(self) -> None:
        self.sessions: dict[str, list[Message]] = {}

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        return list(self.sessions.get(session_id, []))

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        self.sessions[session_id] = list(messages)

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        self.sessions.setdefault(session_id, []).extend(messages)
        return len(self.sessions[session_id])

    async def delete(self, session_id: str) -> bool:
        return self.sessions.pop(session_id, None) is not None

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> PlainStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


def _static_protocols(store: Any) -> list[bool]:
    """What ``isinstance(store, protocol)`` answers on Python 3.12+, for each protocol."""
    return [
        all(
            callable(inspect.getattr_static(store, name, None))
            for name, value in vars(protocol).items()
            if callable(value) and not name.startswith("_")
        )
        for protocol in PROTOCOLS
    ]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda store: EncryptedStore(store, keys=KEYS),
        lambda store: CachedStore(store, max_staleness=timedelta(0)),
        lambda store: CachedStore(EncryptedStore(store, keys=KEYS)),
    ],
    ids=["encrypted", "cached", "cached-encrypted"],
)
async def test_wrappers_have_their_stores_protocols_on_the_class(wrap: Any, tmp_path: Path) -> None:
    for inner in (InMemoryStateStore(), SQLiteStateStore(tmp_path / "c.db")):
        wrapper = wrap(inner)
        assert _static_protocols(wrapper) == [True] * len(PROTOCOLS)
        assert all(isinstance(wrapper, protocol) for protocol in PROTOCOLS)
        assert type(wrapper).__name__ == type(wrapper).__mro__[1].__name__  # named as before
        await wrapper.append("a", [Message(role="user", content="hi")])
        snapshot = await fork_session(wrapper, "a", "b")
        assert snapshot == SessionSnapshot([Message(role="user", content="hi")])
        assert await wrapper.load("b") == [Message(role="user", content="hi")]
        await wrapper.aclose()


@pytest.mark.parametrize(
    "wrap",
    [lambda store: EncryptedStore(store, keys=KEYS)],
    ids=["encrypted"],
)
def test_wrappers_of_a_plain_store_claim_nothing_more(wrap: Any) -> None:
    wrapper = wrap(PlainStore())
    assert _static_protocols(wrapper) == [False] * len(PROTOCOLS)
    assert not any(isinstance(wrapper, protocol) for protocol in PROTOCOLS)
