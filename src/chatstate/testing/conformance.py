"""The conformance suite every :class:`~chatstate.StateStore` passes.

Subclass :class:`StateStoreConformance` in a test module and give it two fixtures::

    from chatstate.testing import StateStoreConformance

    class TestMyStore(StateStoreConformance):
        @pytest.fixture
        async def store(self):
            async with MyStore(...) as store:   # empty, one per test
                yield store

        @pytest.fixture
        def advance_time(self):
            async def advance(seconds: float) -> None:
                ...  # make the store see `seconds` pass (a fake clock); or pytest.skip(...)
            return advance

It needs pytest and pytest-asyncio (``asyncio_mode = "auto"``, or mark the class).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatstate.errors import (
    ConfigurationError,
    InvalidMessageError,
    InvalidSessionIdError,
)
from chatstate.stores.base import StateStore
from chatstate.testing._history import HistoryConformance
from chatstate.testing._metadata import MetadataConformance
from chatstate.testing._optional import OptionalProtocolsConformance
from chatstate.testing._samples import (
    AdvanceTime,
    _assistant,
    _short_repr,
    _turns,
    _user,
    sample_conversation,
)
from chatstate.testing._write_ids import WriteIdsConformance

__all__ = ["StateStoreConformance", "sample_conversation"]


# Each holds something a careless store gets wrong: control characters, surrogates, lengths.
INVALID_SESSION_IDS: list[Any] = [
    "",
    "x" * 257,
    "a\x00b",
    "line\nbreak",
    "tab\there",
    "del\x7f",
    "\ud800",
    "c1\x85control",
    "x" * 10_000_000,  # 10 MB: rejected by its length, before anything scans it
    123,
    None,
    b"bytes",
]
# Each may collide with another session's keys in a careless store.
TRICKY_SESSION_IDS = [
    "a",
    "a:",
    "a:b",
    "a*",
    "a?",
    "[a]",
    "{a}",
    "a}",
    "{",
    "A",
    "a b",
    "ü",
    "x" * 256,
]


class StateStoreConformance(
    OptionalProtocolsConformance, WriteIdsConformance, HistoryConformance, MetadataConformance
):
    """Tests that hold for every StateStore. See the module docstring for the fixtures."""

    @pytest.fixture
    def store(self) -> StateStore:
        raise NotImplementedError("override the `store` fixture: an empty store for each test")

    @pytest.fixture
    def advance_time(self) -> AdvanceTime:
        raise NotImplementedError("override the `advance_time` fixture")

    # -- load and save ---------------------------------------------------------------------------

    async def test_unknown_session_loads_empty(self, store: StateStore) -> None:
        assert await store.load("nobody") == []
        assert await store.load("nobody", limit=5) == []

    async def test_save_then_load_round_trips(self, store: StateStore) -> None:
        messages = [_user("Hello"), _assistant("Hi!")]
        await store.save("s", messages)
        assert await store.load("s") == messages

    async def test_every_kind_of_message_round_trips(self, store: StateStore) -> None:
        conversation = sample_conversation()
        await store.save("s", conversation)
        loaded = await store.load("s")
        assert loaded == conversation
        assert [message.model_dump() for message in loaded] == [
            message.model_dump() for message in conversation
        ]
        await store.append("t", conversation, max_messages=100)
        assert await store.load("t") == conversation

    async def test_long_messages_round_trip(self, store: StateStore) -> None:
        # Long enough that a store which compresses (above 1 KiB by default) does.
        long = [
            _user(" ".join(f"word{index % 97} of a long message" for index in range(400))),
            _assistant("é🌍 " * 1500),
        ]
        await store.append("s", long)
        await store.append("s", [_user("short")])
        assert await store.load("s") == [*long, _user("short")]
        assert await store.load("s", limit=2) == [long[1], _user("short")]

    async def test_save_replaces_the_history(self, store: StateStore) -> None:
        await store.save("s", _turns(5))
        await store.save("s", [_user("only")])
        assert await store.load("s") == [_user("only")]

    async def test_save_of_nothing_deletes(self, store: StateStore) -> None:
        await store.save("s", _turns(2))
        await store.save("s", [])
        assert await store.load("s") == []
        assert await store.delete("s") is False

    @pytest.mark.parametrize(
        ("limit", "expected"),
        [(None, 5), (0, 0), (1, 1), (3, 3), (5, 5), (6, 5), (1000, 5)],
    )
    async def test_load_limit_returns_the_newest_oldest_first(
        self, store: StateStore, limit: int | None, expected: int
    ) -> None:
        messages = _turns(5)
        await store.save("s", messages)
        loaded = await store.load("s", limit=limit)
        assert loaded == messages[len(messages) - expected :]

    # -- append ------------------------------------------------------------------------------------

    async def test_append_keeps_order_and_returns_the_length(self, store: StateStore) -> None:
        assert await store.append("s", _turns(2, "a")) == 2
        assert await store.append("s", _turns(3, "b")) == 5
        assert await store.load("s") == _turns(2, "a") + _turns(3, "b")

    async def test_append_keeps_the_newest_max_messages(self, store: StateStore) -> None:
        messages = _turns(25)
        for start in range(0, 25, 5):
            length = await store.append("s", messages[start : start + 5], max_messages=7)
            assert length == min(start + 5, 7)
        assert await store.load("s") == messages[-7:]

    async def test_append_larger_than_the_bound_keeps_its_tail(self, store: StateStore) -> None:
        messages = _turns(10)
        assert await store.append("s", messages, max_messages=4) == 4
        assert await store.load("s") == messages[-4:]

    @pytest.mark.parametrize("unlimited", [None, -1])
    async def test_append_without_bound_keeps_everything(
        self, store: StateStore, unlimited: int | None
    ) -> None:
        for start in range(0, 60, 20):
            await store.append("s", _turns(20, f"{start}-"), max_messages=unlimited)
        assert len(await store.load("s")) == 60

    async def test_append_of_nothing_changes_nothing(self, store: StateStore) -> None:
        assert await store.append("s", []) == 0
        assert await store.load("s") == []
        await store.append("s", _turns(3))
        assert await store.append("s", [], max_messages=1) == 3
        assert await store.load("s") == _turns(3)

    async def test_concurrent_appends_lose_nothing(self, store: StateStore) -> None:
        async def turn(index: int) -> None:
            await store.append("s", [_user(f"q{index}"), _assistant(f"a{index}")])

        await asyncio.gather(*(turn(index) for index in range(100)))
        loaded = await store.load("s")
        assert len(loaded) == 200
        pairs = {(loaded[i].text, loaded[i + 1].text) for i in range(0, 200, 2)}
        assert pairs == {(f"q{index}", f"a{index}") for index in range(100)}

    # -- delete and isolation ------------------------------------------------------------------

    async def test_delete_forgets_the_session(self, store: StateStore) -> None:
        await store.append("s", _turns(3))
        assert await store.delete("s") is True
        assert await store.load("s") == []
        assert await store.delete("s") is False

    async def test_sessions_are_isolated(self, store: StateStore) -> None:
        for session_id in TRICKY_SESSION_IDS:
            await store.append(session_id, [_user(f"from {session_id}")])
        for session_id in TRICKY_SESSION_IDS:
            assert await store.load(session_id) == [_user(f"from {session_id}")]
        await store.delete("a")
        assert await store.load("a") == []
        assert await store.load("a:") == [_user("from a:")]
        assert await store.load("A") == [_user("from A")]

    # -- expiry ------------------------------------------------------------------------------------

    async def test_session_expires_after_its_ttl(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        await store.append("s", _turns(2), ttl=10)
        await store.append("forever", _turns(2))
        await advance_time(6)
        assert await store.load("s") == _turns(2)
        await advance_time(6)
        assert await store.load("s") == []
        assert await store.load("forever") == _turns(2)
        assert await store.delete("s") is False

    async def test_append_refreshes_the_ttl(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        await store.append("s", [_user("1")], ttl=10)
        await advance_time(7)
        await store.append("s", [_user("2")], ttl=10)
        await advance_time(7)
        assert await store.load("s") == [_user("1"), _user("2")]

    async def test_append_without_ttl_makes_the_session_permanent(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        await store.append("s", [_user("1")], ttl=10)
        await store.append("s", [_user("2")])
        await advance_time(20)
        assert await store.load("s") == [_user("1"), _user("2")]

    async def test_save_sets_the_ttl(self, store: StateStore, advance_time: AdvanceTime) -> None:
        await store.save("s", _turns(2), ttl=10)
        await advance_time(11)
        assert await store.load("s") == []

    async def test_an_expired_session_starts_afresh(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        await store.append("s", [_user("old")], ttl=5)
        await advance_time(6)
        assert await store.append("s", [_user("new")], ttl=5) == 1
        assert await store.load("s") == [_user("new")]

    # -- ownership of lists ----------------------------------------------------------------------

    async def test_caller_changes_to_lists_do_not_reach_the_store(self, store: StateStore) -> None:
        given = _turns(3)
        await store.save("s", given)
        given.append(_user("sneaky"))
        given[0] = _user("changed")
        loaded = await store.load("s")
        assert loaded == _turns(3)
        loaded.clear()
        appended = [_user("x")]
        await store.append("s", appended)
        appended.append(_user("y"))
        assert await store.load("s") == [*_turns(3), _user("x")]

    # -- bad input -------------------------------------------------------------------------------

    @pytest.mark.parametrize("session_id", INVALID_SESSION_IDS, ids=_short_repr)
    async def test_invalid_session_ids_are_rejected(
        self, store: StateStore, session_id: Any
    ) -> None:
        with pytest.raises(InvalidSessionIdError):
            await store.append(session_id, [_user("x")])
        with pytest.raises(InvalidSessionIdError):
            await store.save(session_id, [_user("x")])
        with pytest.raises(InvalidSessionIdError):
            await store.load(session_id)
        with pytest.raises(InvalidSessionIdError):
            await store.delete(session_id)

    @pytest.mark.parametrize(
        "messages",
        [
            "hello",
            b"hello",
            ["hello"],
            [{"role": "user", "content": "hi"}],
            _user("not in a list"),
            [_user("valid first"), "then not"],
            [_user("valid first"), None],
            42,
        ],
        ids=repr,
    )
    async def test_non_messages_are_rejected_and_change_nothing(
        self, store: StateStore, messages: Any
    ) -> None:
        await store.save("s", [_user("kept")])
        with pytest.raises(InvalidMessageError):
            await store.append("s", messages)
        with pytest.raises(InvalidMessageError):
            await store.save("s", messages)
        assert await store.load("s") == [_user("kept")]

    @pytest.mark.parametrize(
        "options",
        [
            {"max_messages": 0},
            {"max_messages": -2},
            {"max_messages": "5"},
            {"max_messages": 2.5},
            {"max_messages": True},
            {"ttl": 0},
            {"ttl": -1},
            {"ttl": "60"},
            {"ttl": float("nan")},
        ],
        ids=repr,
    )
    async def test_bad_append_options_are_rejected_and_change_nothing(
        self, store: StateStore, options: dict[str, Any]
    ) -> None:
        await store.save("s", [_user("kept")])
        with pytest.raises(ConfigurationError):
            await store.append("s", [_user("x")], **options)
        assert await store.load("s") == [_user("kept")]

    @pytest.mark.parametrize("limit", [-1, "3", 1.5])
    async def test_bad_load_limits_are_rejected(self, store: StateStore, limit: Any) -> None:
        await store.save("s", [_user("kept")])
        with pytest.raises(ConfigurationError):
            await store.load("s", limit=limit)
        with pytest.raises(ConfigurationError):
            await store.load("unknown", limit=limit)

    async def test_close_is_idempotent(self, store: StateStore) -> None:
        await store.aclose()
        await store.aclose()
