"""pydantic-ai's message history over chatstate: ModelMessage lists through pydantic-ai's own
ModelMessagesTypeAdapter, and an Agent on TestModel resuming a conversation from the store."""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessagesTypeAdapter,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.test import TestModel

from chatstate.integrations.pydantic_ai import ChatStateMessageHistory, ModelMessages
from chatstate.stores import BackendStore, ItemStore


def _agent() -> Agent[None, str]:
    agent = Agent(TestModel(), instructions="Be brief.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    return agent


async def test_an_agent_resumes_its_conversation_from_the_store(
    chat_store: BackendStore[Any],
) -> None:
    agent = _agent()
    history = ChatStateMessageHistory(chat_store)
    first = await agent.run("What's the weather?", message_history=await history.load("u"))
    assert await history.append("u", first.new_messages()) == 4
    stored = await ChatStateMessageHistory(chat_store).load("u")
    assert stored == first.all_messages()  # equal, part by part, timestamps and all
    assert [type(part) for message in stored for part in message.parts] == [
        UserPromptPart, ToolCallPart, ToolReturnPart, TextPart
    ]  # fmt: skip
    second = await agent.run("And tomorrow?", message_history=stored)
    assert second.all_messages()[:4] == stored  # the model was sent the first run
    await history.append("u", second.new_messages())
    assert await history.load("u") == second.all_messages()
    assert (
        ModelMessagesTypeAdapter.validate_python(
            ModelMessagesTypeAdapter.dump_python(await history.load("u"))
        )
        == second.all_messages()
    )


async def test_a_bounded_history_starts_at_a_turn(chat_store: BackendStore[Any]) -> None:
    agent = _agent()
    history = ChatStateMessageHistory(chat_store, max_messages=6)
    messages: list[Any] = []
    for prompt in ("one", "two", "three"):  # 4 messages (a tool call), then 2 and 2
        result = await agent.run(prompt, message_history=messages)
        await history.append("u", result.new_messages())
        messages = result.all_messages()
    assert len(messages) == 8 and await history.items.length("u") == 6
    # The newest 6 begin with the first run's tool return and its answer: left out, so the
    # history starts with the second run's request.
    assert isinstance(messages[2].parts[0], ToolReturnPart)
    assert await history.load("u") == messages[4:]
    assert await history.load("u", limit=3) == messages[6:]  # from the third run's request
    assert await history.load("u", limit=1) == []  # no turn starts in the newest one


async def test_save_and_clear(chat_store: BackendStore[Any]) -> None:
    result = await _agent().run("hi")
    history = ChatStateMessageHistory(chat_store)
    await history.save("u", result.all_messages())
    await history.save("u", result.all_messages())
    assert await history.load("u") == result.all_messages()
    assert await history.clear("u")
    assert await history.load("u") == []
    assert not await history.clear("u")
    shared = ItemStore.over(chat_store, ModelMessages())
    await ChatStateMessageHistory(shared).append("v", result.all_messages())
    assert await shared.get("v") == result.all_messages()
