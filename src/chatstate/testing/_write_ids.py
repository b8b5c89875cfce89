"""The conformance tests of write ids: every write applied at most once, whatever is retried.

A store whose writes take ``write_id=`` (every store built on
:class:`~chatstate.stores.BackendStore` does) recognises a write it has applied, among the last
32 writes of the session, and does not apply it again; a retry never undoes a write that came
after the first run. A store without write ids has these tests skipped, saying why.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from chatstate.errors import InvalidInputError
from chatstate.stores.base import SessionSnapshot, StateStore
from chatstate.testing._samples import _turns, _user


def _with_write_ids(store: StateStore) -> Any:
    if "write_id" not in inspect.signature(store.append).parameters:
        pytest.skip(f"{type(store).__name__}'s writes take no write_id")
    return store


class WriteIdsConformance:
    """Mixed into :class:`~chatstate.testing.StateStoreConformance`."""

    async def test_an_append_repeated_with_its_write_id_is_stored_once(
        self, store: StateStore
    ) -> None:
        writes = _with_write_ids(store)
        assert await writes.append("s", _turns(2), write_id="turn-1") == 2
        assert await writes.append("s", _turns(2), write_id="turn-1") == 2
        assert await writes.append("s", [_user("next")], write_id="turn-2") == 3
        assert await writes.append("s", _turns(2), write_id="turn-1") == 3  # still known
        assert await store.load("s") == [*_turns(2), _user("next")]

    async def test_a_retried_save_or_delete_never_undoes_a_later_write(
        self, store: StateStore
    ) -> None:
        writes = _with_write_ids(store)
        await writes.save("s", _turns(2), write_id="save-1")
        await store.append("s", [_user("after the save")])
        await writes.save("s", _turns(2), write_id="save-1")  # a late retry: a no-op
        assert await store.load("s") == [*_turns(2), _user("after the save")]
        assert await writes.delete("s", write_id="delete-1") is True
        await store.append("s", [_user("after the delete")])
        assert await writes.delete("s", write_id="delete-1") is True  # what its first run found
        assert await store.load("s") == [_user("after the delete")]
        assert await writes.delete("gone", write_id="delete-2") is False
        assert await writes.delete("gone", write_id="delete-2") is False

    async def test_a_retried_restore_reports_its_own_write(self, store: StateStore) -> None:
        writes = _with_write_ids(store)
        if not hasattr(store, "restore"):
            pytest.skip(f"{type(store).__name__} has no restore")
        snapshot = SessionSnapshot(_turns(3))
        assert await writes.restore("copy", snapshot, write_id="fork-1") is True
        # Its reply was lost, say: the retry finds the session its first run made.
        assert await writes.restore("copy", snapshot, write_id="fork-1") is True
        assert await writes.restore("copy", snapshot, write_id="fork-2") is False  # another's
        assert await store.load("copy") == _turns(3)

    async def test_write_ids_are_remembered_for_the_last_32_writes(self, store: StateStore) -> None:
        writes = _with_write_ids(store)
        await writes.append("s", [_user("first")], write_id="first")
        for index in range(31):
            await writes.append("s", [_user(f"m{index}")], write_id=f"w{index}")
        await writes.append("s", [_user("first")], write_id="first")  # 31 writes since: known
        assert len(await store.load("s")) == 32
        await writes.append("s", [_user("w31")], write_id="w31")
        await writes.append("s", [_user("w32")], write_id="w32")
        # 33 writes since: forgotten, and so applied again (the documented bound).
        await writes.append("s", [_user("first")], write_id="first")
        assert len(await store.load("s")) == 35

    @pytest.mark.parametrize("write_id", ["", "x" * 129, "a\nb", 7, b"id", 3.5], ids=repr)
    async def test_a_bad_write_id_is_rejected_and_nothing_is_written(
        self, store: StateStore, write_id: Any
    ) -> None:
        writes = _with_write_ids(store)
        await store.append("s", [_user("kept")])
        with pytest.raises(InvalidInputError, match="write_id"):
            await writes.append("s", [_user("no")], write_id=write_id)
        with pytest.raises(InvalidInputError, match="write_id"):
            await writes.save("s", [_user("no")], write_id=write_id)
        with pytest.raises(InvalidInputError, match="write_id"):
            await writes.delete("s", write_id=write_id)
        assert await store.load("s") == [_user("kept")]
