"""Every store built on the core has every optional protocol where ``isinstance`` looks for it:
on the class (``inspect.getattr_static``, which Python 3.12 and later use for runtime-checkable
protocols); whatever its options (encryption, a near cache). A store of the base protocol only
claims none of them."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from chatstate import Encryption, InMemoryStateStore, Message, NearCache, RedisStateStore
from chatstate.sessions import ConversationIndex
from chatstate.stores import BackendStore, SQLiteStateStore
from chatstate.stores.base import (
    SessionLeases,
    SessionSnapshot,
    SessionSummaries,
    SessionTransfer,
    StateStore,
    VersionedStore,
)
from chatstate.transfer import fork_session

from .conftest import FakeClock
from .dict_backend import DictBackend
from .plain_store import PlainStore

PROTOCOLS = (
    StateStore,
    SessionSummaries,
    VersionedStore,
    SessionLeases,
    SessionTransfer,
    ConversationIndex,
)
KEYS = Encryption(keys={"k": b"k" * 32})


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
    "make",
    [
        lambda path: InMemoryStateStore(),
        lambda path: InMemoryStateStore(encryption=Encryption(keys={"k": b"k" * 32})),
        lambda path: SQLiteStateStore(path, near_cache=NearCache()),
        lambda path: RedisStateStore(fakeredis.FakeAsyncRedis(), near_cache=NearCache()),
        lambda path: BackendStore(DictBackend(FakeClock()), encryption=KEYS),
    ],
    ids=["memory", "encrypted-memory", "near-cached-sqlite", "near-cached-redis", "third-party"],
)
async def test_every_core_store_has_every_protocol_on_its_class(make: Any, tmp_path: Path) -> None:
    store = make(tmp_path / "c.db")
    assert _static_protocols(store) == [True] * len(PROTOCOLS)
    assert all(isinstance(store, protocol) for protocol in PROTOCOLS)
    await store.append("a", [Message(role="user", content="hi")])
    assert await fork_session(store, "a", "b") == SessionSnapshot(
        [Message(role="user", content="hi")]
    )
    assert await store.load("b") == [Message(role="user", content="hi")]
    await store.aclose()


def test_a_store_of_the_base_protocol_claims_nothing_more() -> None:
    store = PlainStore()
    assert _static_protocols(store) == [True] + [False] * (len(PROTOCOLS) - 1)
    assert not any(isinstance(store, protocol) for protocol in PROTOCOLS[1:])
