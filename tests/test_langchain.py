"""LangChain's BaseChatMessageHistory over chatstate: message types, ids, tool calls and
additional kwargs kept, and RunnableWithMessageHistory on a fake chat model."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from chatstate.integrations.langchain import ChatStateMessageHistory, LangChainMessages
from chatstate.stores import BackendStore, ItemStore

# RunnableWithMessageHistory is deprecated since langchain-core 1.3.3 (not removed): it is what
# the integration is asked to serve, so its warning is expected here.
DEPRECATED = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")

MESSAGES: list[BaseMessage] = [
    SystemMessage("Be brief.", id="s1"),
    HumanMessage("What is 2 + 2? ✓", id="h1", name="ada", additional_kwargs={"lang": ["en"]}),
    AIMessage(
        "",
        id="a1",
        tool_calls=[{"name": "add", "args": {"a": 2, "b": 2}, "id": "c1", "type": "tool_call"}],
        additional_kwargs={"refusal": None},
        response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
        usage_metadata={"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
    ),
    ToolMessage("4", tool_call_id="c1", id="t1", artifact={"raw": 4}, status="success"),
    AIMessage([{"type": "text", "text": "4."}], id="a2"),
    ChatMessage("custom", role="critic", id="x1"),
    FunctionMessage("legacy", name="f", id="f1"),
    AIMessageChunk("part", id="k1"),
]


async def test_it_is_a_chat_message_history(chat_store: BackendStore[Any]) -> None:
    assert isinstance(ChatStateMessageHistory("s", chat_store), BaseChatMessageHistory)


async def test_messages_come_back_equal_with_types_ids_tool_calls_and_kwargs(
    chat_store: BackendStore[Any],
) -> None:
    history = ChatStateMessageHistory("s", chat_store)
    await history.aadd_messages(MESSAGES[:3])
    await history.aadd_messages(MESSAGES[3:])
    again = await ChatStateMessageHistory("s", chat_store).aget_messages()
    assert again == MESSAGES
    assert [type(message) for message in again] == [type(message) for message in MESSAGES]
    assert again[2].tool_calls == MESSAGES[2].tool_calls  # type: ignore[attr-defined]
    assert again[1].additional_kwargs == {"lang": ["en"]} and again[1].name == "ada"


async def test_aclear_and_an_empty_history(chat_store: BackendStore[Any]) -> None:
    history = ChatStateMessageHistory("s", chat_store)
    assert await history.aget_messages() == []
    await history.aadd_messages(MESSAGES[:2])
    await history.aadd_messages([])
    await history.aclear()
    assert await history.aget_messages() == []
    await history.aclear()


async def test_a_bound_and_two_writers(chat_store: BackendStore[Any]) -> None:
    history = ChatStateMessageHistory("s", chat_store, max_messages=4)
    await history.aadd_messages(MESSAGES)
    assert await history.aget_messages() == MESSAGES[-4:]
    one, two = ChatStateMessageHistory("t", chat_store), ChatStateMessageHistory("t", chat_store)

    async def turns(history: ChatStateMessageHistory, name: str) -> None:
        for turn in range(10):
            await history.aadd_messages(
                [HumanMessage(f"{name}{turn}?"), AIMessage(f"{name}{turn}!")]
            )

    async with anyio.create_task_group() as group:
        group.start_soon(turns, one, "a")
        group.start_soon(turns, two, "b")
    stored = [message.content for message in await one.aget_messages()]
    assert len(stored) == 40
    assert all(stored[index][:-1] == stored[index + 1][:-1] for index in range(0, 40, 2))


async def test_the_sync_interface_says_to_use_the_async_one(
    chat_store: BackendStore[Any],
) -> None:
    history = ChatStateMessageHistory("s", chat_store)
    with pytest.raises(TypeError, match="aget_messages"):
        _ = history.messages
    with pytest.raises(TypeError, match="aadd_messages"):
        history.add_messages(MESSAGES)
    with pytest.raises(TypeError, match="aclear"):
        history.clear()


async def test_a_shared_item_store(chat_store: BackendStore[Any]) -> None:
    shared = ItemStore.over(chat_store, LangChainMessages())
    await ChatStateMessageHistory("s", shared).aadd_messages(MESSAGES[:2])
    assert await shared.get("s") == MESSAGES[:2]


@DEPRECATED
async def test_runnable_with_message_history_remembers_the_conversation(
    chat_store: BackendStore[Any],
) -> None:
    replies = [
        AIMessage(
            "",
            id="r1",
            tool_calls=[{"name": "add", "args": {"a": 2}, "id": "c9", "type": "tool_call"}],
        ),
        AIMessage("Your name is Ada.", id="r2"),
    ]
    model = FakeMessagesListChatModel(responses=replies)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    seen: list[list[BaseMessage]] = []

    def record(value: Any) -> Any:
        seen.append(value.to_messages())
        return value

    chain = RunnableWithMessageHistory(
        prompt | record | model,
        lambda session_id: ChatStateMessageHistory(session_id, chat_store),
        input_messages_key="question",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "ada"}}
    first = await chain.ainvoke({"question": "I am Ada. Add 2."}, config=config)
    assert first.tool_calls[0]["id"] == "c9"
    second = await chain.ainvoke({"question": "What is my name?"}, config=config)
    assert second.content == "Your name is Ada."
    # The second call was sent the first turn, tool call and all, from the store.
    assert seen[1][1:3] == [HumanMessage("I am Ada. Add 2."), replies[0]]
    stored = await ChatStateMessageHistory("ada", chat_store).aget_messages()
    assert stored == [
        HumanMessage("I am Ada. Add 2."),
        replies[0],
        HumanMessage("What is my name?"),
        replies[1],
    ]
