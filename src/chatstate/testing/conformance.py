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
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chatstate.errors import (
    ConfigurationError,
    InvalidInputError,
    InvalidMessageError,
    InvalidSessionIdError,
)
from chatstate.messages import ImagePart, Message, TextPart, ToolCall
from chatstate.stores.base import (
    Fold,
    SessionSnapshot,
    SessionSummaries,
    SessionTransfer,
    StateStore,
)

__all__ = ["StateStoreConformance", "sample_conversation"]

AdvanceTime = Callable[[float], Awaitable[None]]


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def sample_conversation() -> list[Message]:
    """A conversation using every kind of message: parts, parallel tool calls and their results,
    names, metadata and non-ASCII text."""
    return [
        Message(role="system", content="You are terse."),
        Message(
            role="user",
            content=(TextPart(text="What is in this picture? 🌍"), ImagePart(url="data:,x")),
            name="alice",
            metadata={"client": "web", "tags": ["a", "b"], "nested": {"n": 1, "ok": True}},
        ),
        Message(
            role="assistant",
            content=None,
            tool_calls=(
                ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}'),
                ToolCall(id="call_2", name="time", arguments={"tz": "Europe/Paris"}),
            ),
        ),
        Message(role="tool", content='{"temp": 21}', tool_call_id="call_1", name="weather"),
        Message(role="tool", content="14:00", tool_call_id="call_2", name="time"),
        Message(role="assistant", content="Sunny, 21 °C, at 14:00.\nZeile 2: ünïcödé"),
    ]


def _turns(count: int, prefix: str = "m") -> list[Message]:
    return [_user(f"{prefix}{index}") for index in range(count)]


def _summary(text: str) -> Message:
    return Message(role="system", content=f"summary: {text}", metadata={"folded": True})


def _fold_one(text: str) -> Fold:
    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        return 1, _summary(text)

    return fold


def _summaries(store: StateStore) -> SessionSummaries:
    if not isinstance(store, SessionSummaries):
        pytest.skip(f"{type(store).__name__} keeps no summaries (it is not a SessionSummaries)")
    return store


def _transfers(store: StateStore) -> SessionTransfer:
    if not isinstance(store, SessionTransfer):
        pytest.skip(f"{type(store).__name__} has no snapshot/restore (not a SessionTransfer)")
    return store


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"


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


class StateStoreConformance:
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

    # -- summaries (stores that keep them: SessionSummaries) ----------------------------------

    async def test_a_fold_replaces_the_oldest_messages_with_a_summary(
        self, store: StateStore
    ) -> None:
        summaries = _summaries(store)
        assert await summaries.load_with_summary("s") == ([], None)
        await store.append("s", _turns(6))
        assert await summaries.load_with_summary("s") == (_turns(6), None)
        seen: list[tuple[list[Message], Message | None]] = []

        def folding(count: int, text: str) -> Fold:
            async def fold(
                history: list[Message], summary: Message | None
            ) -> tuple[int, Message] | None:
                seen.append((history, summary))
                return count, _summary(text)

            return fold

        assert await summaries.compact("s", folding(2, "first")) is True
        assert await summaries.load_with_summary("s") == (_turns(6)[2:], _summary("first"))
        assert await summaries.load_with_summary("s", limit=2) == (
            _turns(6)[4:],
            _summary("first"),
        )
        assert await store.load("s") == _turns(6)[2:]
        assert await summaries.compact("s", folding(3, "second")) is True
        assert seen == [(_turns(6), None), (_turns(6)[2:], _summary("first"))]
        assert await summaries.load_with_summary("s") == (_turns(6)[5:], _summary("second"))
        assert await summaries.compact("nobody", folding(1, "x")) is False
        assert len(seen) == 2  # a session without history is not folded

    async def test_a_fold_that_declines_or_misbehaves_changes_nothing(
        self, store: StateStore
    ) -> None:
        summaries = _summaries(store)
        await store.append("s", _turns(3))

        def returning(result: Any) -> Fold:
            async def fold(history: list[Message], summary: Message | None) -> Any:
                return result

            return fold

        async def failing(history: list[Message], summary: Message | None) -> Any:
            raise RuntimeError("the model is down")

        assert await summaries.compact("s", returning(None)) is False
        for bad in [(0, _summary("x")), (3, _summary("x")), (1, "text"), (True, _summary("x")), 2]:
            with pytest.raises(InvalidInputError):
                await summaries.compact("s", returning(bad))
        with pytest.raises(RuntimeError, match="the model is down"):
            await summaries.compact("s", failing)
        assert await summaries.load_with_summary("s") == (_turns(3), None)

    async def test_a_fold_raced_by_turns_keeps_them_and_removes_nothing_twice(
        self, store: StateStore
    ) -> None:
        summaries = _summaries(store)

        def folding_two_while(*turns: tuple[list[Message], int | None]) -> Fold:
            async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
                for messages, bound in turns:  # what other turns do while the model summarises
                    await store.append("s", messages, max_messages=bound)
                return 2, _summary("two")

            return fold

        await store.save("s", _turns(4))  # m0 m1 m2 m3; folds m0 m1
        assert await summaries.compact("s", folding_two_while(([_user("late")], 4))) is True
        # the turn's trim took m0: only m1 is left to remove
        assert await summaries.load_with_summary("s") == (
            [*_turns(4)[2:], _user("late")],
            _summary("two"),
        )
        await store.save("s", _turns(4))
        assert await summaries.compact("s", folding_two_while((_turns(3, "n"), 4))) is True
        assert await summaries.load_with_summary("s") == (  # the trim took more than the fold
            [_turns(4)[3], *_turns(3, "n")],
            _summary("two"),
        )
        await store.save("s", _turns(4))
        assert await summaries.compact("s", folding_two_while((_turns(2, "n"), None))) is True
        assert await summaries.load_with_summary("s") == (
            [*_turns(4)[2:], *_turns(2, "n")],
            _summary("two"),
        )

    async def test_a_fold_raced_by_a_rewrite_or_another_fold_changes_nothing(
        self, store: StateStore
    ) -> None:
        summaries = _summaries(store)
        await store.save("s", _turns(4))

        async def fold_while_saved(
            history: list[Message], summary: Message | None
        ) -> tuple[int, Message]:
            await store.save("s", _turns(3, "new"))
            return 2, _summary("stale")

        assert await summaries.compact("s", fold_while_saved) is False
        assert await summaries.load_with_summary("s") == (_turns(3, "new"), None)

        async def fold_while_folded(
            history: list[Message], summary: Message | None
        ) -> tuple[int, Message]:
            assert await summaries.compact("s", _fold_one("first")) is True
            return 2, _summary("second")

        assert await summaries.compact("s", fold_while_folded) is False
        assert await summaries.load_with_summary("s") == (_turns(3, "new")[1:], _summary("first"))

    async def test_a_summary_is_dropped_by_save_and_delete(self, store: StateStore) -> None:
        summaries = _summaries(store)
        await store.append("s", _turns(3))
        assert await summaries.compact("s", _fold_one("kept")) is True
        await store.save("s", [_user("new history")])
        assert await summaries.load_with_summary("s") == ([_user("new history")], None)
        await store.append("s", _turns(2))
        assert await summaries.compact("s", _fold_one("again")) is True
        assert await store.delete("s") is True
        assert await summaries.load_with_summary("s") == ([], None)
        await store.append("s", [_user("afresh")])
        assert await summaries.load_with_summary("s") == ([_user("afresh")], None)

    async def test_a_summary_lives_as_long_as_its_session(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        summaries = _summaries(store)
        await store.append("s", _turns(3), ttl=10)
        assert await summaries.compact("s", _fold_one("sum")) is True
        await advance_time(7)
        await store.append("s", [_user("more")], ttl=10)  # refreshes the summary with the list
        await advance_time(7)
        assert await summaries.load_with_summary("s") == (
            [*_turns(3)[1:], _user("more")],
            _summary("sum"),
        )
        await advance_time(4)
        assert await summaries.load_with_summary("s") == ([], None)
        await store.append("s", [_user("afresh")])  # no summary comes back with a new session
        assert await summaries.load_with_summary("s") == ([_user("afresh")], None)

    # -- whole sessions (optional: SessionTransfer) ----------------------------------------------

    async def test_a_snapshot_restores_as_a_new_session(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        transfers = _transfers(store)
        assert await transfers.snapshot("nobody") is None
        await store.append("s", _turns(3), ttl=100)
        await advance_time(40)
        snapshot = await transfers.snapshot("s")
        assert snapshot is not None and snapshot.messages == _turns(3)
        assert snapshot.summary is None
        assert snapshot.ttl is not None and 55 <= snapshot.ttl <= 60
        assert await transfers.restore("copy", snapshot) is True
        assert await store.load("copy") == _turns(3)
        await store.append("copy", [_user("only in the copy")], ttl=100)
        assert await store.load("s") == _turns(3)  # the two go on apart
        await advance_time(60)
        assert await store.load("s") == []  # its own expiry
        assert len(await store.load("copy")) == 4

    async def test_a_restore_never_overwrites_unless_asked(self, store: StateStore) -> None:
        transfers = _transfers(store)
        await store.append("taken", _turns(2, "old"))
        new = SessionSnapshot(_turns(3, "new"))
        assert await transfers.restore("taken", new) is False
        assert await store.load("taken") == _turns(2, "old")
        assert await transfers.restore("taken", new, overwrite=True) is True
        assert await store.load("taken") == _turns(3, "new")
        await store.append("taken", [_user("after")], max_messages=2)
        assert await store.load("taken") == [_turns(3, "new")[2], _user("after")]

    async def test_an_expired_session_does_not_block_a_restore(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        transfers = _transfers(store)
        await store.append("s", _turns(2, "old"), ttl=10)
        await advance_time(10)
        assert await transfers.restore("s", SessionSnapshot(_turns(1, "new"), ttl=30)) is True
        assert await store.load("s") == _turns(1, "new")
        await advance_time(30)
        assert await store.load("s") == []

    async def test_a_summary_travels_with_its_session(self, store: StateStore) -> None:
        transfers, summaries = _transfers(store), _summaries(store)
        await store.append("s", _turns(4))
        assert await summaries.compact("s", _fold_one("earlier")) is True
        snapshot = await transfers.snapshot("s")
        assert snapshot == SessionSnapshot(_turns(4)[1:], _summary("earlier"), None)
        assert await transfers.restore("copy", snapshot) is True
        assert await summaries.load_with_summary("copy") == (_turns(4)[1:], _summary("earlier"))
        # Overwritten by a snapshot without one, the old summary goes.
        assert await transfers.restore("copy", SessionSnapshot([_user("x")]), overwrite=True)
        assert await summaries.load_with_summary("copy") == ([_user("x")], None)

    @pytest.mark.parametrize(
        "bad",
        [
            SessionSnapshot([]),
            SessionSnapshot(["not a message"]),  # type: ignore[list-item]
            SessionSnapshot([_user("x")], ttl=-1),
            SessionSnapshot([_user("x")], summary="text"),  # type: ignore[arg-type]
            [_user("x")],
        ],
        ids=_short_repr,
    )
    async def test_a_bad_snapshot_is_rejected_and_changes_nothing(
        self, store: StateStore, bad: Any
    ) -> None:
        transfers = _transfers(store)
        await store.append("s", _turns(2))
        with pytest.raises(InvalidInputError):
            await transfers.restore("s", bad, overwrite=True)
        assert await store.load("s") == _turns(2)

    async def test_close_is_idempotent(self, store: StateStore) -> None:
        await store.aclose()
        await store.aclose()
