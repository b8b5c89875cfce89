"""The conformance tests of session metadata (:class:`~chatstate.stores.SessionMetadata`): the
document of a session, written with a turn or alone, loaded with the history, carried by
snapshots, exports and forks, expiring and deleted with the session, and its two times.

A store without it (not a SessionMetadata, or built on a backend without
:class:`~chatstate.stores.Describing`) has these tests skipped, saying why.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
import pytest

from chatstate.errors import ConfigurationError, InvalidMetadataError
from chatstate.stores.base import (
    SessionHistory,
    SessionMetadata,
    SessionSummaries,
    SessionTransfer,
    StateStore,
)
from chatstate.testing._samples import _assistant, _summary, _turns, _user
from chatstate.transfer import export_sessions, fork_session, import_sessions

AdvanceTime = Callable[[float], Awaitable[None]]

_TICK = 0.02
"""Long enough for every backend's clock (Redis: milliseconds) to move on."""


async def _described(store: StateStore) -> Any:
    if not isinstance(store, SessionMetadata):
        pytest.skip(f"{type(store).__name__} keeps no session metadata (not a SessionMetadata)")
    try:
        await store.metadata("probe")
    except ConfigurationError as exc:
        pytest.skip(str(exc))
    return store


def _stamp(when: datetime | None) -> datetime:
    assert when is not None, "a session written now has its times"
    return when


class MetadataConformance:
    """Mixed into :class:`~chatstate.testing.StateStoreConformance`."""

    async def test_metadata_written_with_a_turn_loads_with_the_history(
        self, store: StateStore
    ) -> None:
        meta = await _described(store)
        assert await meta.metadata("s") is None
        assert await meta.load_with_metadata("s") == ([], None)
        document: dict[str, Any] = {
            "title": "Trip to Oslo",
            "tags": ["travel", "ünïcode ✈"],
            "n": 3,
            "x": 0.5,
        }
        await meta.append("s", _turns(2), metadata=document)
        messages, info = await meta.load_with_metadata("s")
        assert messages == _turns(2)
        assert info.metadata == document and info.title == "Trip to Oslo"
        assert _stamp(info.created_at) <= _stamp(info.updated_at)
        assert await meta.metadata("s") == info
        assert (await meta.load_with_metadata("s", limit=1))[0] == _turns(2)[-1:]
        # The caller's dict is its own, both ways.
        info.metadata["title"] = "changed"
        document["tags"].append("later")
        assert (await meta.metadata("s")).metadata["title"] == "Trip to Oslo"
        assert (await meta.metadata("s")).metadata["tags"] == ["travel", "ünïcode ✈"]

    async def test_set_metadata_replaces_the_document_of_a_session(self, store: StateStore) -> None:
        meta = await _described(store)
        await meta.append("s", _turns(1))
        assert (await meta.metadata("s")).metadata == {}
        assert await meta.set_metadata("s", {"title": "a", "pinned": True}) is True
        assert await meta.set_metadata("s", {"title": "b"}) is True
        assert (await meta.metadata("s")).metadata == {"title": "b"}
        assert await meta.set_metadata("s", None) is True
        assert (await meta.metadata("s")).metadata == {}
        assert await meta.load("s") == _turns(1)
        # No session, no metadata: nothing is created.
        assert await meta.set_metadata("nobody", {"title": "x"}) is False
        assert await meta.metadata("nobody") is None
        assert await meta.load("nobody") == []

    async def test_created_stays_and_updated_follows_the_history(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        meta = await _described(store)

        async def tick() -> None:
            # A store's times are by its clock: the real one, or one the test gives it.
            await advance_time(_TICK)
            await anyio.sleep(_TICK)

        await meta.append("s", _turns(2), metadata={"title": "t"})
        first = await meta.metadata("s")
        await tick()
        await meta.set_metadata("s", {"title": "renamed"})
        renamed = await meta.metadata("s")
        assert (renamed.created_at, renamed.updated_at) == (first.created_at, first.updated_at)
        await meta.append("s", [_user("more")])
        appended = await meta.metadata("s")
        assert appended.created_at == first.created_at
        assert _stamp(appended.updated_at) > _stamp(first.updated_at)
        await tick()
        await meta.save("s", _turns(3))
        saved = await meta.metadata("s")
        assert saved.created_at == first.created_at
        assert _stamp(saved.updated_at) > _stamp(appended.updated_at)
        assert saved.metadata == {"title": "renamed"}, "a save keeps the metadata"
        if isinstance(store, SessionHistory):
            await tick()
            await store.pop("s")
            popped = await meta.metadata("s")
            assert _stamp(popped.updated_at) > _stamp(saved.updated_at)
            assert popped.metadata == {"title": "renamed"}

    async def test_metadata_expires_and_is_deleted_with_the_session(
        self, store: StateStore, advance_time: AdvanceTime
    ) -> None:
        meta = await _described(store)
        await meta.append("s", _turns(1), ttl=10, metadata={"title": "short"})
        await meta.append("kept", _turns(1), metadata={"title": "long"})
        await advance_time(12)
        assert await meta.metadata("s") is None
        await meta.append("s", _turns(1))
        assert (await meta.metadata("s")).metadata == {}, "an expired session's metadata is gone"
        await meta.delete("kept")
        assert await meta.metadata("kept") is None
        await meta.append("kept", _turns(1))
        assert (await meta.metadata("kept")).metadata == {}, "a deleted session's too"

    async def test_a_pop_or_removal_that_empties_the_session_removes_its_metadata(
        self, store: StateStore
    ) -> None:
        meta = await _described(store)
        if not isinstance(store, SessionHistory):
            pytest.skip("no history operations")
        await meta.append("s", _turns(2), metadata={"title": "t"})
        await store.pop("s", 2)
        assert await meta.metadata("s") is None
        await meta.append("s", [_user("only")], metadata={"title": "t"})
        (only,) = (await store.history("s")).ids
        await store.delete_message("s", only)
        assert await meta.metadata("s") is None

    async def test_bad_metadata_is_refused_and_nothing_is_stored(self, store: StateStore) -> None:
        meta = await _described(store)
        await meta.append("s", _turns(1), metadata={"title": "t"})
        bad: list[Any] = [
            ["not", "a", "dict"],
            {1: "int key"},
            {"nan": float("nan")},
            {"tuple": (1, 2)},
            {"set": {1}},
            {"bytes": b"x"},
            {"deep": {"k": {"k": [object()]}}},
            {"big": "x" * (64 << 10)},
        ]
        for document in bad:
            with pytest.raises(InvalidMetadataError):
                await meta.append("s", [_user("never")], metadata=document)
            with pytest.raises(InvalidMetadataError):
                await meta.set_metadata("s", document)
        assert await meta.load("s") == _turns(1)
        assert (await meta.metadata("s")).metadata == {"title": "t"}

    async def test_large_metadata_round_trips(self, store: StateStore) -> None:
        meta = await _described(store)
        document = {"notes": "compressible " * 3000, "random": secrets.token_hex(2000)}
        await meta.append("s", _turns(1), metadata=document)
        assert (await meta.metadata("s")).metadata == document
        assert (await meta.load_with_metadata("s"))[1].metadata == document

    async def test_a_retried_metadata_write_applies_once(self, store: StateStore) -> None:
        meta = await _described(store)
        await meta.append("s", _turns(1))
        await meta.set_metadata("s", {"title": "first"}, write_id="meta-1")
        await meta.set_metadata("s", {"title": "second"}, write_id="meta-2")
        assert await meta.set_metadata("s", {"title": "first"}, write_id="meta-1") is True
        assert (await meta.metadata("s")).metadata == {"title": "second"}
        await meta.append("s", [_assistant("x")], metadata={"title": "turn"}, write_id="turn-1")
        await meta.set_metadata("s", {"title": "after"})
        await meta.append("s", [_assistant("x")], metadata={"title": "turn"}, write_id="turn-1")
        assert (await meta.metadata("s")).metadata == {"title": "after"}
        assert await meta.load("s") == [*_turns(1), _assistant("x")]

    async def test_snapshots_exports_and_forks_carry_the_metadata(self, store: StateStore) -> None:
        meta = await _described(store)
        if not isinstance(store, SessionTransfer):
            pytest.skip("no snapshots")
        await meta.append("s", _turns(2), metadata={"title": "source"})
        snapshot = await store.snapshot("s")
        assert snapshot is not None and snapshot.metadata == {"title": "source"}
        await store.restore("copy", snapshot)
        assert (await meta.metadata("copy")).metadata == {"title": "source"}
        await meta.append("bare", _turns(1))
        bare = await store.snapshot("bare")
        assert bare is not None and bare.metadata is None
        await store.restore("copy", bare, overwrite=True)
        assert (await meta.metadata("copy")).metadata == {}, "a restore writes the whole session"
        await fork_session(store, "s", "forked")
        assert (await meta.metadata("forked")).metadata == {"title": "source"}
        lines = [line async for line in export_sessions(store, ["s"])]
        await store.delete("s")
        assert (await import_sessions(store, lines)).imported == ["s"]
        assert (await meta.metadata("s")).metadata == {"title": "source"}

    async def test_compaction_keeps_the_metadata(self, store: StateStore) -> None:
        meta = await _described(store)
        if not isinstance(store, SessionSummaries):
            pytest.skip("no summaries")
        await meta.append("s", _turns(6), metadata={"title": "kept"})

        async def fold(history: list[Any], summary: Any) -> tuple[int, Any]:
            return 4, _summary("folded")

        assert await store.compact("s", fold) is True
        assert (await meta.metadata("s")).metadata == {"title": "kept"}
