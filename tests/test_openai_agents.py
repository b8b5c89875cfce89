"""The OpenAI Agents SDK's Session over chatstate: its documented semantics one by one, the same
answers as the SDK's own SQLiteSession, and its Runner on a scripted model (no network)."""

from __future__ import annotations

import copy
from typing import Any

import anyio
import pytest
from agents import Agent, Runner, SQLiteSession, function_tool, set_tracing_disabled
from agents.memory.session import Session
from agents.memory.session_settings import SessionSettings
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call

from chatstate.errors import ConfigurationError
from chatstate.integrations.openai_agents import ChatStateSession
from chatstate.stores import BackendStore, ItemStore, JsonItems

set_tracing_disabled(True)

ITEMS: list[Any] = [
    {"content": "What's the weather in Paris?", "role": "user"},
    {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "tool"}]},
    {
        "arguments": '{"city":"Paris"}',
        "call_id": "c1",
        "name": "get_weather",
        "type": "function_call",
        "id": "fc_1",
        "status": "completed",
    },
    {"call_id": "c1", "output": "sunny", "type": "function_call_output"},
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "Sunny, 21 °C.", "annotations": [], "logprobs": []}
        ],
    },
]


async def test_it_is_a_session_of_the_sdk(chat_store: BackendStore[Any]) -> None:
    assert isinstance(ChatStateSession("s", chat_store), Session)


async def test_items_are_stored_exactly_and_returned_equal_in_order(
    chat_store: BackendStore[Any],
) -> None:
    session = ChatStateSession("s", chat_store)
    given = copy.deepcopy(ITEMS)
    await session.add_items(given[:2])
    await session.add_items(given[2:])
    assert given == ITEMS  # not changed
    assert await session.get_items() == ITEMS
    again = ChatStateSession("s", chat_store)
    assert await again.get_items() == ITEMS


async def test_get_items_limit_is_the_latest_n_in_chronological_order(
    chat_store: BackendStore[Any],
) -> None:
    session = ChatStateSession("s", chat_store)
    await session.add_items(ITEMS)
    assert await session.get_items(limit=2) == ITEMS[3:]
    assert await session.get_items(limit=1) == ITEMS[4:]
    assert await session.get_items(limit=50) == ITEMS
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=-1) == []


async def test_the_session_settings_limit_applies_without_one(
    chat_store: BackendStore[Any],
) -> None:
    session = ChatStateSession("s", chat_store, session_settings={"limit": 3})
    assert session.session_settings == SessionSettings(limit=3)
    await session.add_items(ITEMS)
    assert await session.get_items() == ITEMS[2:]
    assert await session.get_items(limit=1) == ITEMS[4:]  # an explicit limit wins
    assert ChatStateSession("t", chat_store).session_settings == SessionSettings()


async def test_pop_item_returns_and_removes_the_newest(chat_store: BackendStore[Any]) -> None:
    session = ChatStateSession("s", chat_store)
    assert await session.pop_item() is None
    await session.add_items(ITEMS[:2])
    assert await session.pop_item() == ITEMS[1]
    assert await session.get_items() == ITEMS[:1]
    assert await session.pop_item() == ITEMS[0]
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_clear_session_removes_every_item(chat_store: BackendStore[Any]) -> None:
    session = ChatStateSession("s", chat_store)
    other = ChatStateSession("other", chat_store)
    await session.add_items(ITEMS)
    await other.add_items(ITEMS[:1])
    await session.clear_session()
    assert await session.get_items() == []
    assert await other.get_items() == ITEMS[:1]
    await session.clear_session()  # nothing to clear: fine
    await session.add_items([])  # nothing to add: nothing stored
    assert await session.get_items() == []


async def test_the_same_operations_answer_as_the_sdks_own_session(
    chat_store: BackendStore[Any],
) -> None:
    ours, theirs = ChatStateSession("s", chat_store), SQLiteSession("s")
    try:
        steps: list[tuple[str, Any]] = [
            ("add", ITEMS[:3]), ("get", None), ("get", 2), ("pop", None), ("add", ITEMS[3:]),
            ("get", 3), ("pop", None), ("pop", None), ("get", None), ("clear", None),
            ("pop", None), ("get", None), ("add", ITEMS[1:2]), ("get", 1),
        ]  # fmt: skip
        for action, argument in steps:
            if action == "add":
                answers = [await s.add_items(copy.deepcopy(argument)) for s in (ours, theirs)]
            elif action == "get":
                answers = [await s.get_items(argument) for s in (ours, theirs)]
            elif action == "pop":
                answers = [await s.pop_item() for s in (ours, theirs)]
            else:
                answers = [await s.clear_session() for s in (ours, theirs)]
            assert answers[0] == answers[1], (action, argument)
    finally:
        theirs.close()


async def test_concurrent_add_items_from_two_instances_never_interleave(
    chat_store: BackendStore[Any],
) -> None:
    one, two = ChatStateSession("s", chat_store), ChatStateSession("s", chat_store)

    async def turns(session: ChatStateSession, name: str) -> None:
        for turn in range(15):
            await session.add_items([{"role": "user", "content": f"{name}{turn}.{part}"}
                                     for part in range(4)])  # fmt: skip

    async with anyio.create_task_group() as group:
        group.start_soon(turns, one, "a")
        group.start_soon(turns, two, "b")
    stored = [item["content"] for item in await one.get_items()]
    assert len(stored) == 120
    for start in range(0, 120, 4):
        call = stored[start : start + 4]
        assert call == [f"{call[0][:-2]}.{part}" for part in range(4)]


async def test_bounds_and_a_shared_item_store(chat_store: BackendStore[Any]) -> None:
    session = ChatStateSession("s", chat_store, max_items=3)
    await session.add_items(ITEMS)
    assert await session.get_items() == ITEMS[2:]
    shared = ItemStore.over(chat_store, JsonItems(), max_items=2)
    assert await ChatStateSession("s", shared).get_items() == ITEMS[2:]
    with pytest.raises(ConfigurationError):
        ChatStateSession("s", shared, max_items=5)
    with pytest.raises(ConfigurationError):
        ChatStateSession("s", object())  # type: ignore[arg-type]


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _reply(call: ModelCall) -> Any:
    """A scripted model: calls the tool for a weather question, answers from the tool's output,
    and otherwise from the history it was sent."""
    last = call.input[-1]
    if last.get("type") == "function_call_output":
        return [assistant_message(f"It is {last['output']}.", item_id=f"m{len(call.input)}")]
    asked = [item["content"] for item in call.input if item.get("role") == "user"]
    if "weather" in asked[-1]:
        return [function_call("get_weather", {"city": "Paris"}, call_id=f"c{len(call.input)}")]
    return [assistant_message(f"You asked {len(asked)} questions; first: {asked[0]}",
                              item_id=f"m{len(call.input)}")]  # fmt: skip


async def test_the_runner_keeps_a_multi_turn_conversation_with_a_tool_call(
    chat_store: BackendStore[Any],
) -> None:
    model = ScriptedModel([ModelStep.respond(_reply)] * 4)
    agent = Agent(name="Assistant", model=model, tools=[get_weather])
    session = ChatStateSession("user-42", chat_store)
    first = await Runner.run(agent, "What's the weather in Paris?", session=session)
    assert first.final_output == "It is sunny in Paris."
    stored = await session.get_items()
    assert [item.get("type", "message") for item in stored] == [
        "message", "function_call", "function_call_output", "message"
    ]  # fmt: skip
    resumed = ChatStateSession("user-42", chat_store)  # another instance, the same history
    second = await Runner.run(agent, "And what did I ask?", session=resumed)
    assert second.final_output == "You asked 2 questions; first: What's the weather in Paris?"
    assert model.last_call is not None and model.last_call.input[:4] == stored
    assert len(await resumed.get_items()) == 6
    assert model.remaining_steps == 1  # three model calls: tool call, answer, answer
