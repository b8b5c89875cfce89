"""The conformance tests of the optional protocols: summaries (:class:`SessionSummaries`) and
whole sessions (:class:`SessionTransfer`). A store without one has those tests skipped, saying
why."""

from __future__ import annotations

from typing import Any

import pytest

from chatstate.errors import InvalidInputError
from chatstate.messages import Message
from chatstate.stores.base import Fold, SessionSnapshot, StateStore
from chatstate.testing._samples import (
    AdvanceTime,
    _fold_one,
    _short_repr,
    _summaries,
    _summary,
    _transfers,
    _turns,
    _user,
)


class OptionalProtocolsConformance:
    """Mixed into :class:`~chatstate.testing.StateStoreConformance`."""

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
