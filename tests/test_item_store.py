"""ItemStore: items that are not chatstate messages, on every backend, with the codec's stages,
bounds, expiry, write ids and fences."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from chatstate import InMemoryStateStore, Message
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    DecryptionError,
    InvalidInputError,
    LeaseLostError,
    UnsupportedFormatError,
)
from chatstate.stores import (
    BackendStore,
    Encryption,
    ItemStore,
    JsonItems,
    MemoryBackend,
    PydanticItems,
)
from chatstate.testing import FakeClock

from .conftest import kinds, store_of_kind
from .dict_backend import DictBackend

ITEMS = [
    {"role": "user", "content": "Hello, wörld ✓", "type": "message"},
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}'},
    {"type": "function_call_output", "call_id": "c1", "output": "2", "n": 1.5, "ok": None},
    {"role": "assistant", "content": [{"type": "output_text", "text": "hi", "annotations": []}]},
]


@pytest.fixture(params=kinds("memory", "sqlite", "encrypted-sqlite", "fakeredis", "redis"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BackendStore[Any]]:
    kind = request.param
    options: dict[str, Any] = {}
    if kind == "encrypted-sqlite":
        kind, options["encryption"] = "sqlite", Encryption(keys={"k": secrets.token_bytes(32)})
    async with store_of_kind(kind, request, tmp_path, **options) as made:
        yield made


async def test_items_come_back_equal_in_order(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems())
    assert await items.append("s", ITEMS[:2]) == 2
    assert await items.append("s", ITEMS[2:]) == 4
    assert await items.get("s") == ITEMS
    assert await items.get("s", limit=2) == ITEMS[2:]  # the latest 2, oldest first
    assert await items.get("s", limit=10) == ITEMS
    assert await items.get("s", limit=0) == []
    assert await items.get("none") == []
    assert await items.length("s") == 4


async def test_pop_removes_and_returns_the_newest(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems())
    await items.append("s", ITEMS)
    assert await items.pop("s") == [ITEMS[3]]
    assert await items.pop("s", 2) == ITEMS[1:3]
    assert await items.get("s") == ITEMS[:1]
    assert await items.pop("s", 5) == ITEMS[:1]
    assert await items.pop("s") == []
    assert await items.length("s") == 0


async def test_replace_and_delete(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems())
    await items.append("s", ITEMS)
    await items.replace("s", ITEMS[:1])
    assert await items.get("s") == ITEMS[:1]
    assert await items.delete("s")
    assert not await items.delete("s")
    await items.append("s", ITEMS[:1])
    await items.replace("s", [])
    assert await items.get("s") == []


async def test_a_bound_keeps_the_newest(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems(), max_items=3)
    for item in ITEMS:
        await items.append("s", [item])
    assert await items.get("s") == ITEMS[1:]


async def test_big_items_are_compressed_and_come_back(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems(), compress_over=64)
    big = {"content": " ".join(f"word{index % 7}" for index in range(2000))}
    await items.append("s", [big])
    assert await items.get("s") == [big]
    (entry,) = (await store.backend.read("s", limit=None, summary=False, touch=None,
                                         numbers=False)).entries  # fmt: skip
    assert len(entry) < 2000


async def test_a_message_store_and_an_item_store_refuse_each_others_entries(
    store: BackendStore[Any],
) -> None:
    items = ItemStore.over(store, JsonItems(), on_corrupt="raise")
    await items.append("items", ITEMS[:1])
    await store.append("messages", [Message(role="user", content="hi")])
    with pytest.raises(CorruptEntryError):
        await items.get("messages")
    if not isinstance(store, InMemoryStateStore):  # it keeps the messages themselves, unread
        with pytest.raises(UnsupportedFormatError):
            await store.snapshot("items")


async def test_an_item_that_is_not_json_stores_nothing(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems())
    with pytest.raises(InvalidInputError, match=r"items\[1\]"):
        await items.append("s", [ITEMS[0], {"x": object()}])
    with pytest.raises(InvalidInputError):
        await items.append("s", [{"x": float("nan")}])
    assert await items.get("s") == []


async def test_concurrent_appends_never_interleave(store: BackendStore[Any]) -> None:
    one, two = ItemStore.over(store, JsonItems()), ItemStore.over(store, JsonItems())

    async def writer(items: ItemStore[Any], name: str) -> None:
        for turn in range(20):
            await items.append("s", [{"w": name, "t": turn, "i": index} for index in range(3)])

    async with anyio.create_task_group() as group:
        group.start_soon(writer, one, "a")
        group.start_soon(writer, two, "b")
    stored = await one.get("s")
    assert len(stored) == 120
    for start in range(0, 120, 3):  # every call's items together, in order
        run = stored[start : start + 3]
        assert [item["i"] for item in run] == [0, 1, 2]
        assert len({(item["w"], item["t"]) for item in run}) == 1


async def test_a_write_under_a_lost_lease_stores_nothing(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems())
    await items.append("s", ITEMS[:1])
    async with items.lease("s", ttl=30, timeout=5) as lease:
        assert await store.backend.release_lease("s", lease.token)  # taken from under it
        assert await store.backend.acquire_lease("s", "another", 30.0)
        with pytest.raises(LeaseLostError):
            await items.append("s", ITEMS[1:2])
        with pytest.raises(LeaseLostError):
            await items.pop("s")
    assert await items.get("s") == ITEMS[:1]


async def test_a_retried_append_is_applied_once(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, JsonItems())
    await items.append("s", ITEMS[:1], write_id="turn-1")
    assert await items.append("s", ITEMS[:1], write_id="turn-1") == 1
    assert await items.get("s") == ITEMS[:1]


class Note(BaseModel):
    text: str
    tags: list[str] = []


async def test_pydantic_items(store: BackendStore[Any]) -> None:
    items = ItemStore.over(store, PydanticItems(Note))
    notes = [Note(text="a", tags=["x"]), Note(text="b")]
    await items.append("s", notes)
    assert await items.get("s") == notes


async def test_items_expire_and_corrupt_ones_are_skipped() -> None:
    clock = FakeClock()
    async with ItemStore(MemoryBackend(clock=clock), JsonItems(), ttl=60) as items:
        await items.append("s", ITEMS[:2])
        await items.backend.append(
            "s", [b"\x01\x01{bad"], max_entries=None, ttl=60, write_id="3" * 16, fence=None
        )
        assert await items.get("s", limit=2) == ITEMS[:2]  # the bad one does not count
        assert items.corrupt_entries == 1
        assert await items.pop("s") == [ITEMS[1]]  # the bad one removed on the way
        assert await items.get("s") == ITEMS[:1]
        clock.advance(61)
        assert await items.get("s") == []


async def test_encrypted_items_hold_no_plaintext_and_need_their_keys() -> None:
    keys = {"k": secrets.token_bytes(32)}
    backend = MemoryBackend()
    sealed = ItemStore(backend, JsonItems(), encryption=Encryption(keys=keys))
    await sealed.append("s", ITEMS)
    page = await backend.read("s", limit=None, summary=False, touch=None, numbers=False)
    assert not any(b"function_call" in entry for entry in page.entries)
    assert await sealed.get("s") == ITEMS
    other = ItemStore(backend, JsonItems(), encryption=Encryption(keys={"k": b"o" * 32}))
    with pytest.raises(DecryptionError):
        await other.get("s")
    moved = ItemStore(backend, JsonItems(), encryption=Encryption(keys=keys))
    entries = page.entries
    await backend.append("t", entries, max_entries=None, ttl=None, write_id="6" * 16, fence=None)
    with pytest.raises(DecryptionError):  # sealed for another session
        await moved.get("t")


class _NoPop(DictBackend):
    """A backend with the interface alone: no pop."""

    def __getattribute__(self, name: str) -> Any:
        if name == "pop":
            raise AttributeError(name)
        return super().__getattribute__(name)


async def test_a_backend_without_pop_says_so() -> None:
    async with ItemStore(_NoPop(FakeClock()), JsonItems()) as items:
        await items.append("s", ITEMS)
        assert await items.get("s", limit=1) == ITEMS[3:]
        with pytest.raises(ConfigurationError, match="no pop"):
            await items.pop("s")
