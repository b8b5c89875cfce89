"""The conformance tests of the history operations: message ids, pages by id, pop, undo, edits
and removals by id (:class:`~chatstate.stores.SessionHistory`).

A store without them (not a SessionHistory, or built on a backend without
:class:`~chatstate.stores.Editing`) has these tests skipped, saying why.
"""

from __future__ import annotations

from typing import Any

import pytest

from chatstate.errors import (
    ConfigurationError,
    InvalidInputError,
    MessageNotFoundError,
    ToolExchangeError,
    VersionConflictError,
)
from chatstate.messages import Message, ToolCall
from chatstate.stores.base import (
    SessionHistory,
    SessionSnapshot,
    SessionTransfer,
    StateStore,
    VersionedStore,
)
from chatstate.testing._samples import _assistant, _turns, _user, sample_conversation
from chatstate.transfer import export_sessions, fork_session, import_sessions


async def _history(store: StateStore) -> Any:
    if not isinstance(store, SessionHistory):
        pytest.skip(f"{type(store).__name__} has no history operations (not a SessionHistory)")
    try:
        await store.history("probe")
    except ConfigurationError as exc:
        pytest.skip(str(exc))
    return store


def _texts(page: Any) -> list[Any]:
    return [stored.message.content for stored in page.messages]


def _exchange(call_id: str) -> list[Message]:
    """A turn with one tool exchange: user, assistant call, tool result, assistant answer."""
    return [
        _user(f"ask {call_id}"),
        Message(
            role="assistant", tool_calls=(ToolCall(id=call_id, name="lookup", arguments="{}"),)
        ),
        Message(role="tool", content=f"result {call_id}", tool_call_id=call_id),
        _assistant(f"answer {call_id}"),
    ]


class HistoryConformance:
    """Mixed into :class:`~chatstate.testing.StateStoreConformance`."""

    async def test_a_page_of_history_gives_each_message_an_id(self, store: StateStore) -> None:
        history = await _history(store)
        conversation = sample_conversation()
        await store.append("s", conversation)
        page = await history.history("s", limit=50)
        assert [stored.message for stored in page.messages] == conversation
        assert len(set(page.ids)) == len(conversation)
        assert all(isinstance(i, str) and i for i in page.ids)
        assert not page.has_more
        if isinstance(store, VersionedStore):
            assert page.version == (await store.load_versioned("s"))[1]
        empty = await history.history("nobody")
        assert (empty.messages, empty.version, empty.has_more) == ([], 0, False)

    async def test_pages_before_an_id_walk_the_history_back(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", _turns(7))
        newest = await history.history("s", limit=3)
        assert _texts(newest) == ["m4", "m5", "m6"] and newest.has_more
        older = await history.history("s", limit=3, before=newest.oldest_id)
        assert _texts(older) == ["m1", "m2", "m3"] and older.has_more
        oldest = await history.history("s", limit=3, before=older.oldest_id)
        assert _texts(oldest) == ["m0"] and not oldest.has_more
        assert (await history.history("s", limit=3, before=oldest.oldest_id)).messages == []
        forward = await history.history("s", limit=4, after=oldest.newest_id)
        assert _texts(forward) == ["m1", "m2", "m3", "m4"] and forward.has_more
        last = await history.history("s", limit=4, after=forward.newest_id)
        assert _texts(last) == ["m5", "m6"] and not last.has_more

    async def test_ids_stay_while_turns_arrive_and_old_ones_are_trimmed(
        self, store: StateStore
    ) -> None:
        history = await _history(store)
        await store.append("s", _turns(6), max_messages=6)
        first = await history.history("s")
        ids = dict(zip(_texts(first), first.ids, strict=True))
        await store.append("s", _turns(3, "n"), max_messages=6)  # m0..m2 trimmed
        page = await history.history("s")
        assert _texts(page) == ["m3", "m4", "m5", "n0", "n1", "n2"]
        assert page.ids[:3] == [ids["m3"], ids["m4"], ids["m5"]]
        earlier = await history.history("s", limit=2, before=ids["m5"])
        assert _texts(earlier) == ["m3", "m4"] and not earlier.has_more
        # A cursor trimmed away still reads on from where it was.
        gone = await history.history("s", limit=2, after=ids["m1"])
        assert _texts(gone) == ["m3", "m4"] and gone.has_more

    async def test_a_pop_removes_the_newest_and_its_ids_are_not_given_again(
        self, store: StateStore
    ) -> None:
        history = await _history(store)
        await store.append("s", _turns(4))
        before = (await history.history("s")).ids
        assert await history.pop("s", 2) == _turns(4)[2:]
        assert await store.load("s") == _turns(2)
        await store.append("s", [_user("new")])
        after = (await history.history("s")).ids
        assert after[:2] == before[:2] and after[2] not in before
        assert await history.pop("s", 10) == [*_turns(2), _user("new")]
        assert await store.load("s") == [] and await history.pop("s") == []
        with pytest.raises(ConfigurationError):
            await history.pop("s", 0)

    async def test_undo_removes_the_last_whole_turn(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", [_user("hello"), _assistant("hi"), *_exchange("c1")])
        assert await history.undo("s") == _exchange("c1")
        assert await store.load("s") == [_user("hello"), _assistant("hi")]
        assert await history.undo("s") == [_user("hello"), _assistant("hi")]
        assert await store.load("s") == []
        assert await history.undo("s") == []
        await store.append("s", [_assistant("a greeting, and no user yet")])
        assert await history.undo("s") == []
        assert await store.load("s") == [_assistant("a greeting, and no user yet")]

    async def test_a_retried_undo_removes_one_turn(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", [*_exchange("c1"), *_exchange("c2")])
        assert await history.undo("s", write_id="undo-1") == _exchange("c2")
        assert await history.undo("s", write_id="undo-1") == []  # the retry: nothing more
        assert await store.load("s") == _exchange("c1")

    async def test_an_edit_replaces_a_message_and_keeps_its_id(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", [_user("a"), _assistant("b"), _user("c"), _assistant("d")])
        page = await history.history("s")
        version = await history.edit_message("s", page.ids[2], _user("C"))
        assert version != page.version
        again = await history.history("s")
        assert _texts(again) == ["a", "b", "C", "d"] and again.ids == page.ids
        assert again.version == version
        # Edit and resend: the edited message is the last one.
        await history.edit_message("s", page.ids[0], _user("A"), truncate_after=True)
        assert await store.load("s") == [_user("A")]
        assert (await history.history("s")).ids == page.ids[:1]

    async def test_a_deleted_message_leaves_the_other_ids_alone(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", _turns(3))
        page = await history.history("s")
        await history.delete_message("s", page.ids[1])
        after = await history.history("s")
        assert _texts(after) == ["m0", "m2"] and after.ids == [page.ids[0], page.ids[2]]
        with pytest.raises(MessageNotFoundError) as raised:
            await history.delete_message("s", page.ids[1])
        assert raised.value.message_id == page.ids[1]
        await history.delete_message("s", page.ids[0])
        assert await history.delete_message("s", page.ids[2]) == 0  # the last: the session goes
        assert await store.load("s") == []

    async def test_a_retried_edit_or_delete_applies_once(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", _turns(3))
        ids = (await history.history("s")).ids
        await history.delete_message("s", ids[1], write_id="del-1")
        await history.delete_message("s", ids[1], write_id="del-1")  # recognised, no error
        await history.edit_message("s", ids[2], _user("x"), write_id="edit-1")
        await store.append("s", [_user("later")])
        await history.edit_message("s", ids[2], _user("y"), write_id="edit-1")  # not again
        assert await store.load("s") == [_user("m0"), _user("x"), _user("later")]

    async def test_an_edit_conditional_on_a_version_is_refused_when_stale(
        self, store: StateStore
    ) -> None:
        history = await _history(store)
        await store.append("s", _turns(2))
        page = await history.history("s")
        await store.append("s", [_user("meanwhile")])
        with pytest.raises(VersionConflictError) as raised:
            await history.edit_message("s", page.ids[0], _user("x"), if_version=page.version)
        assert raised.value.expected == page.version
        with pytest.raises(VersionConflictError):
            await history.delete_message("s", page.ids[0], if_version=page.version)
        assert await store.load("s") == [*_turns(2), _user("meanwhile")]
        current = (await history.history("s")).version
        await history.delete_message("s", page.ids[0], if_version=current)
        assert await store.load("s") == [_user("m1"), _user("meanwhile")]

    async def test_no_edit_breaks_a_tool_exchange(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", _exchange("c1"))
        ids = (await history.history("s")).ids
        with pytest.raises(ToolExchangeError):
            await history.delete_message("s", ids[2])  # the result alone
        with pytest.raises(ToolExchangeError):
            await history.delete_message("s", ids[1])  # the call alone
        with pytest.raises(ToolExchangeError):
            await history.edit_message("s", ids[1], _assistant("no call any more"))
        with pytest.raises(ToolExchangeError):
            await history.edit_message(
                "s", ids[2], Message(role="tool", content="x", tool_call_id="other")
            )
        assert await store.load("s") == _exchange("c1")
        # A result edited in place, and a call edited with what follows it removed, are fine.
        await history.edit_message(
            "s", ids[2], Message(role="tool", content="fixed", tool_call_id="c1")
        )
        await history.edit_message("s", ids[1], _assistant("no call"), truncate_after=True)
        assert await store.load("s") == [_user("ask c1"), _assistant("no call")]

    async def test_bad_ids_and_arguments_are_refused(self, store: StateStore) -> None:
        history = await _history(store)
        await store.append("s", _turns(2))
        for bad in ["", "x", "-1", "1.0", " 1", "\u0661", 1, None, "1" + "0" * 15]:
            with pytest.raises(InvalidInputError):
                await history.delete_message("s", bad)
        with pytest.raises(InvalidInputError):
            await history.history("s", before="0", after="1")
        for limit in [0, -1, 1.5, None, 10_001]:
            with pytest.raises(ConfigurationError):
                await history.history("s", limit=limit)
        with pytest.raises(MessageNotFoundError):
            await history.edit_message("s", "99999", _user("x"))
        with pytest.raises(MessageNotFoundError):
            await history.edit_message("nobody", "0", _user("x"))
        assert await store.load("s") == _turns(2)

    async def test_a_restore_import_or_fork_keeps_the_ids(self, store: StateStore) -> None:
        history = await _history(store)
        if not isinstance(store, SessionTransfer):
            pytest.skip(f"{type(store).__name__} is not a SessionTransfer")
        await store.append("s", _turns(5))
        await history.delete_message("s", (await history.history("s")).ids[1])  # a gap
        page = await history.history("s")
        snapshot = await store.snapshot("s")
        assert snapshot is not None and snapshot.ids == page.ids
        # A restore elsewhere, over an existing session, a fork and an export/import.
        assert await store.restore("copy", snapshot)
        assert (await history.history("copy")).ids == page.ids
        await store.append("other", _turns(9, "o"))
        assert await store.restore("other", snapshot, overwrite=True)
        assert (await history.history("other")).ids == page.ids
        await store.append("other", [_user("next")])
        after = (await history.history("other")).ids
        assert int(after[-1]) >= 9  # after every id the session gave, its 9 first ones too
        await fork_session(store, "s", "fork")
        assert (await history.history("fork")).ids == page.ids
        lines = [line async for line in export_sessions(store, ["s"])]
        await import_sessions(store, lines, on_conflict="overwrite")
        assert (await history.history("s")).ids == page.ids
        assert await store.load("s") == [m.message for m in page.messages]

    async def test_a_restore_refuses_ids_that_are_not_ids(self, store: StateStore) -> None:
        await _history(store)
        if not isinstance(store, SessionTransfer):
            pytest.skip(f"{type(store).__name__} is not a SessionTransfer")
        messages = _turns(2)
        huge = "1" + "0" * 15  # 10**15: more than every backend keeps exactly
        for ids in [
            ["0"],
            ["1", "0"],
            ["0", "0"],
            ["0", "x"],
            ["0", "-1"],
            "01",
            [0, 1],
            ["0", huge],
        ]:
            with pytest.raises(InvalidInputError):
                await store.restore("s", SessionSnapshot(messages, ids=ids))  # type: ignore[arg-type]
        assert await store.load("s") == []
        assert await store.restore("s", SessionSnapshot(messages, ids=["7", "40"]))
        await store.append("s", [_user("next")])
        assert (await store.history("s")).ids == ["7", "40", "41"]  # type: ignore[attr-defined]
