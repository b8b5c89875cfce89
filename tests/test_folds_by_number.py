"""A fold names what it covers by sequence number on every backend, never by comparing entries:
identical messages (the same object, the same bytes) raced by a turn that trims are folded and
kept exactly right (issue 16, finding 4: the Redis fold compared bytes and kept 2 messages of
``ping/pong`` x 3 where 4 were right; the in-memory store did the same with a reused message)."""

from __future__ import annotations

from typing import Any

from chatstate import Message
from chatstate.stores import BackendStore

from .test_conformance import Backend
from .test_conformance import backend as backend  # the fixture: every kind of store


async def test_a_fold_raced_by_a_trimming_turn_keeps_repeated_messages(backend: Backend) -> None:
    store: BackendStore[Any] = backend.store  # type: ignore[assignment]
    ping, pong = Message(role="user", content="ping"), Message(role="assistant", content="pong")
    summary = Message(role="system", content="four folded")
    await store.append("s", [ping, pong] * 3)  # numbered 0-5

    async def fold_while_a_turn_trims(history: list[Message], _: Message | None) -> Any:
        assert history == [ping, pong] * 3
        await store.append("s", [ping, pong], max_messages=6)  # 6-7 added, 0-1 trimmed
        return 4, summary  # folds 0-3: only 2-3 are left to remove

    assert await store.compact("s", fold_while_a_turn_trims) is True
    assert await store.load_with_summary("s") == ([ping, pong] * 2, summary)  # 4-7
