"""Hypothesis drives the history operations (pages by id, pop, undo, edits and removals by id)
among loads, appends, saves, deletes and the passing of time, against each store and a model;
and checks the ids: every stored message keeps its id while its session lives, ids grow with
the order of storage, and a new message never takes a number given before in the session's life
(after a pop, a removal or a save)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import rule

from chatstate import Message

from .conftest import kinds
from .test_stateful import KINDS, SESSIONS, Model, StoreMachine, _messages, run_machine


class HistoryModel(Model):
    """The plain model, with pops, undo and edits by place, and each session's births (a
    session created anew numbers afresh)."""

    def __init__(self) -> None:
        super().__init__()
        self.births: defaultdict[str, int] = defaultdict(int)

    def append(
        self, session_id: str, messages: list[Message], bound: int | None, ttl: float | None
    ) -> int:
        if messages and self._live(session_id) is None:
            self.births[session_id] += 1
        return super().append(session_id, messages, bound, ttl)

    def save(self, session_id: str, messages: list[Message], ttl: float | None) -> None:
        if messages and self._live(session_id) is None:
            self.births[session_id] += 1
        super().save(session_id, messages, ttl)

    def cut(self, session_id: str, start: int, end: int | None = None) -> list[Message]:
        """Remove messages ``start:end`` (to the end if None); what was removed. A session left
        without messages is gone."""
        session = self._live(session_id)
        if session is None:
            return []
        removed = session.messages[start:end]
        del session.messages[start:end]
        if not session.messages:
            del self.sessions[session_id]
        return removed


class HistoryMachine(StoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = HistoryModel()
        # (session, birth) -> content -> the id the store gave it; and the highest number given.
        self.ids: dict[tuple[str, int], dict[str, int]] = {}
        self.high: dict[tuple[str, int], int] = {}

    def _page(self, session: str) -> list[tuple[int, Message]]:
        page = self.run(self.backend.store.history(session, limit=10_000))  # type: ignore[attr-defined]
        return [(int(stored.id), stored.message) for stored in page.messages]

    @rule(session=st.sampled_from(SESSIONS))
    def observe(self, session: str) -> None:
        stored = self._page(session)
        assert [message for _, message in stored] == self.model.load(session, None)
        numbers = [number for number, _ in stored]
        assert numbers == sorted(set(numbers))
        if not stored:
            return
        life = (session, self.model.births[session])
        known = self.ids.setdefault(life, {})
        high = self.high.get(life, -1)
        for number, message in stored:
            content = str(message.content)
            if content in known:
                assert known[content] == number, content  # kept while the session lives
            else:
                assert number > high, (content, number, high)  # never a number given before
                known[content] = number
        self.high[life] = max(high, numbers[-1])

    @rule(session=st.sampled_from(SESSIONS), count=st.integers(1, 3))
    def pop(self, session: str, count: int) -> None:
        popped = self.run(self.backend.store.pop(session, count))  # type: ignore[attr-defined]
        assert popped == self.model.cut(session, -count)

    @rule(session=st.sampled_from(SESSIONS))
    def undo(self, session: str) -> None:
        removed = self.run(self.backend.store.undo(session))  # type: ignore[attr-defined]
        messages = self.model.load(session, None)
        users = [at for at, message in enumerate(messages) if message.role == "user"]
        assert removed == (self.model.cut(session, users[-1]) if users else [])

    @rule(
        session=st.sampled_from(SESSIONS),
        place=st.integers(0, 20),
        truncate=st.booleans(),
        remove=st.booleans(),
    )
    def edit(self, session: str, place: int, truncate: bool, remove: bool) -> None:
        stored = self._page(session)
        if not stored:
            return
        at = place % len(stored)
        message_id = str(stored[at][0])
        history = self.backend.store
        if remove and not truncate:
            self.run(history.delete_message(session, message_id))  # type: ignore[attr-defined]
            self.model.cut(session, at, at + 1)
            return
        (new,) = _messages(1)
        new = Message(role=stored[at][1].role, content=new.content)
        self.run(
            history.edit_message(session, message_id, new, truncate_after=truncate)  # type: ignore[attr-defined]
        )
        live = self.model._live(session)
        assert live is not None
        live.messages[at] = new
        # The edited message keeps its id under its new text.
        life = (session, self.model.births[session])
        self.ids.setdefault(life, {})[str(new.content)] = stored[at][0]
        if truncate:
            self.model.cut(session, at + 1)

    @rule(
        session=st.sampled_from(SESSIONS),
        place=st.integers(0, 20),
        limit=st.integers(1, 4),
        after=st.booleans(),
    )
    def page(self, session: str, place: int, limit: int, after: bool) -> None:
        stored = self._page(session)
        if not stored:
            return
        at = place % len(stored)
        cursor = str(stored[at][0])
        store = self.backend.store
        if after:
            page = self.run(store.history(session, limit=limit, after=cursor))  # type: ignore[attr-defined]
            expected = stored[at + 1 : at + 1 + limit]
            more = at + 1 + limit < len(stored)
        else:
            page = self.run(store.history(session, limit=limit, before=cursor))  # type: ignore[attr-defined]
            expected = stored[max(0, at - limit) : at]
            more = at - limit > 0
        got = [(int(each.id), each.message) for each in page.messages]
        assert (got, page.has_more) == (expected, more)


@pytest.mark.slow  # hypothesis: many examples per store
@pytest.mark.parametrize("kind", kinds(*KINDS))
def test_every_store_keeps_ids_like_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    run_machine(HistoryMachine, kind, request, steps=30)
