"""LlamaIndex's BaseChatStore over chatstate: its contract method by method (async and sync,
the same answers as its SimpleChatStore), and ChatMemoryBuffer with a chat engine on MockLLM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.storage.chat_store import SimpleChatStore
from llama_index.core.storage.chat_store.base import BaseChatStore

from chatstate.errors import StoreError
from chatstate.integrations.llama_index import ChatStateChatStore, LlamaIndexMessages
from chatstate.stores import BackendStore, ItemStore

from .conftest import INTEGRATION_KINDS, new_chat_store

MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
    ChatMessage(role=MessageRole.USER, content="What is 2 + 2? ✓", additional_kwargs={"n": 1}),
    ChatMessage(
        role=MessageRole.ASSISTANT,
        content=None,
        additional_kwargs={"tool_calls": [{"id": "c1", "function": {"name": "add"}}]},
    ),
    ChatMessage(role=MessageRole.TOOL, content="4", additional_kwargs={"tool_call_id": "c1"}),
    ChatMessage(role=MessageRole.ASSISTANT, content="4."),
]


async def test_it_is_a_chat_store(chat_store: BackendStore[Any]) -> None:
    assert isinstance(ChatStateChatStore(chat_store), BaseChatStore)


async def test_messages_come_back_equal(chat_store: BackendStore[Any]) -> None:
    store = ChatStateChatStore(chat_store)
    for message in MESSAGES:
        await store.async_add_message("k", message)
    assert await ChatStateChatStore(chat_store).aget_messages("k") == MESSAGES
    assert await store.aget_messages("unknown") == []
    assert await store.aget_keys() == ["k"]


async def test_the_async_contract_answers_as_simple_chat_store(
    chat_store: BackendStore[Any],
) -> None:
    ours, theirs = ChatStateChatStore(chat_store), SimpleChatStore()
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("aset_messages", ("k", MESSAGES[:3])), ("aget_messages", ("k",)),
        ("async_add_message", ("k", MESSAGES[3])), ("adelete_message", ("k", 1)),
        ("aget_messages", ("k",)), ("adelete_message", ("k", 9)), ("adelete_message", ("x", 0)),
        ("adelete_message", ("k", 2)), ("adelete_last_message", ("k",)),
        ("aget_messages", ("k",)), ("async_add_message", ("k", MESSAGES[4])),
        ("adelete_messages", ("k",)), ("adelete_messages", ("k",)),
        ("adelete_last_message", ("k",)), ("aget_messages", ("k",)),
        ("aset_messages", ("j", MESSAGES)), ("aget_keys", ()), ("adelete_message", ("j", 0)),
        ("aget_messages", ("j",)),
    ]  # fmt: skip
    for name, arguments in steps:
        # A copy each: SimpleChatStore keeps (and later changes) the very list it is given.
        answers = [
            await getattr(store, name)(*[list(a) if isinstance(a, list) else a for a in arguments])
            for store in (ours, theirs)
        ]
        assert answers[0] == answers[1], (name, arguments)


async def test_a_bound_keeps_the_newest(chat_store: BackendStore[Any]) -> None:
    store = ChatStateChatStore(chat_store, max_messages=2)
    for message in MESSAGES:
        await store.async_add_message("k", message)
    assert await store.aget_messages("k") == MESSAGES[-2:]
    shared = ItemStore.over(chat_store, LlamaIndexMessages())
    assert await ChatStateChatStore(shared).aget_messages("k") == MESSAGES[-2:]


async def test_the_chat_engine_remembers_through_the_async_api(
    chat_store: BackendStore[Any],
) -> None:
    chat = ChatStateChatStore(chat_store)
    memory = ChatMemoryBuffer.from_defaults(chat_store=chat, chat_store_key="ada")
    engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=memory)
    await engine.achat("I am Ada.")
    # MockLLM answers with the prompt it was sent: the second is sent the first turn, which
    # ChatMemoryBuffer.aget read through the sync get_messages, from a worker thread.
    reply = await engine.achat("What is my name?")
    assert str(reply).startswith("user: I am Ada.\nassistant:")
    resumed = ChatMemoryBuffer.from_defaults(
        chat_store=ChatStateChatStore(chat_store), chat_store_key="ada"
    )
    assert [message.role for message in await resumed.aget_all()] == ["user", "assistant"] * 2


async def test_an_owned_store_is_closed_by_aclose(tmp_path: Path) -> None:
    chat = ChatStateChatStore.from_url(f"sqlite:///{tmp_path}/chat.db")
    await chat.async_add_message("k", MESSAGES[0])
    await chat.aclose()
    await chat.aclose()
    with pytest.raises(StoreError, match="closed"):
        await chat.aget_messages("k")


async def test_a_sync_method_on_an_event_loop_thread_says_so(
    chat_store: BackendStore[Any],
) -> None:
    with pytest.raises(RuntimeError, match="async twin"):
        ChatStateChatStore(chat_store).get_messages("k")


@pytest.fixture(params=INTEGRATION_KINDS)
def sync_chat_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatStateChatStore]:
    """A chat store used from sync code alone (on an event loop of its own)."""
    store = new_chat_store(request, tmp_path)
    chat = ChatStateChatStore(store, owns_store=True)
    try:
        yield chat
    finally:
        chat.close()
        chat.close()


def test_the_sync_contract_and_the_chat_engine(sync_chat_store: ChatStateChatStore) -> None:
    chat = sync_chat_store
    chat.set_messages("k", MESSAGES[:2])
    chat.add_message("k", MESSAGES[2])
    assert chat.get_messages("k") == MESSAGES[:3]
    assert chat.delete_message("k", 0) == MESSAGES[0]
    assert chat.delete_last_message("k") == MESSAGES[2]
    assert chat.get_keys() == ["k"]
    assert chat.delete_messages("k") == MESSAGES[1:2]
    assert chat.delete_messages("k") is None
    memory = ChatMemoryBuffer.from_defaults(chat_store=chat, chat_store_key="ada")
    engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=memory)
    engine.chat("I am Ada.")
    reply = engine.chat("What is my name?")
    assert str(reply).startswith("user: I am Ada.\nassistant:")
    assert len(chat.get_messages("ada")) == 4


async def test_a_lease_holder_removing_a_message_waits_for_another(
    chat_store: BackendStore[Any],
) -> None:
    chat = ChatStateChatStore(chat_store)
    await chat.aset_messages("k", MESSAGES)
    removed: list[Any] = []

    async def remove() -> None:
        removed.append(await ChatStateChatStore(chat_store).adelete_message("k", 1))

    async with anyio.create_task_group() as group:
        async with chat.items.lease("k", ttl=30, timeout=5):
            group.start_soon(remove)
            await anyio.sleep(0.05)  # the other task runs meanwhile, and waits for the lease
            assert removed == []
            await chat.items.replace("k", MESSAGES[1:])
    # It read the history after the holder's write: index 1 of what the holder left.
    assert removed == [MESSAGES[2]]
    assert await chat.aget_messages("k") == [MESSAGES[1], *MESSAGES[3:]]
