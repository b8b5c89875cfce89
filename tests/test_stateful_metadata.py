"""Hypothesis drives session metadata (written with turns and alone, read alone and with the
history) among loads, appends, saves, deletes, concurrent turns and the passing of time, against
each store and a model: metadata lives exactly as long as its session, a save keeps it, and a
session created anew (after a delete or its expiry) starts without any."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import rule

from chatstate import Message, SessionNotFoundError

from .conftest import kinds
from .test_stateful import KINDS, SESSIONS, Model, StoreMachine, _messages, run_machine

DOCUMENTS = st.none() | st.fixed_dictionaries(
    {"title": st.text(max_size=6)}, optional={"tags": st.lists(st.integers(), max_size=2)}
)


class MetadataModel(Model):
    """The plain model, and each live session's metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, dict[str, Any]] = {}

    def _created(self, session_id: str, messages: list[Message]) -> None:
        if messages and self._live(session_id) is None:
            self.meta.pop(session_id, None)  # a new session: none of the old one's

    def append(
        self,
        session_id: str,
        messages: list[Message],
        bound: int | None,
        ttl: float | None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        self._created(session_id, messages)
        length = super().append(session_id, messages, bound, ttl)
        if metadata is not None and self._live(session_id) is not None:
            self.meta[session_id] = metadata
        return length

    def save(self, session_id: str, messages: list[Message], ttl: float | None) -> None:
        self._created(session_id, messages)
        super().save(session_id, messages, ttl)
        if not messages:
            self.meta.pop(session_id, None)

    def delete(self, session_id: str) -> bool:
        self.meta.pop(session_id, None)
        return super().delete(session_id)

    def metadata(self, session_id: str) -> dict[str, Any] | None:
        return None if self._live(session_id) is None else self.meta.get(session_id, {})

    def set_metadata(self, session_id: str, document: dict[str, Any] | None) -> bool:
        if self._live(session_id) is None:
            return False
        if document is None:
            self.meta.pop(session_id, None)
        else:
            self.meta[session_id] = document
        return True


class MetadataMachine(StoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: MetadataModel = MetadataModel()

    @rule(
        session=st.sampled_from(SESSIONS),
        count=st.integers(0, 2),
        document=DOCUMENTS,
        ttl=st.sampled_from([None, 5.0]),
    )
    def append_with_metadata(
        self, session: str, count: int, document: dict[str, Any] | None, ttl: float | None
    ) -> None:
        messages = _messages(count)
        append = self.backend.store.append(session, messages, ttl=ttl, metadata=document)
        if not messages and document is not None and self.model.metadata(session) is None:
            # Metadata without messages needs a session: refused, nothing stored.
            with pytest.raises(SessionNotFoundError):
                self.run(append)
            return
        assert self.run(append) == self.model.append(session, messages, None, ttl, document)

    @rule(session=st.sampled_from(SESSIONS), document=DOCUMENTS)
    def set_metadata(self, session: str, document: dict[str, Any] | None) -> None:
        written = self.run(self.backend.store.set_metadata(session, document))
        assert written == self.model.set_metadata(session, document)

    @rule(session=st.sampled_from(SESSIONS))
    def read_metadata(self, session: str) -> None:
        info = self.run(self.backend.store.metadata(session))
        assert (None if info is None else info.metadata) == self.model.metadata(session)
        if info is not None:
            assert info.created_at is not None and info.updated_at is not None
            assert info.created_at <= info.updated_at

    @rule(session=st.sampled_from(SESSIONS))
    def load_with_metadata(self, session: str) -> None:
        messages, info = self.run(self.backend.store.load_with_metadata(session))
        assert messages == self.model.load(session, None)
        assert (None if info is None else info.metadata) == self.model.metadata(session)


@pytest.mark.slow  # hypothesis: many examples per store
@pytest.mark.parametrize("kind", kinds(*KINDS))
def test_every_store_keeps_metadata_like_the_model(
    kind: str, request: pytest.FixtureRequest
) -> None:
    run_machine(MetadataMachine, kind, request, steps=30)
