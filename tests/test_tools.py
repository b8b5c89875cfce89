"""Tool turns, on asyncio and on trio: the provider middleware runs the tools a reply calls
(parallel calls concurrently, each under a timeout, failures as results the model sees), asks the
model again up to a bound, and the whole turn is stored in one append; never half an exchange."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest

from chatstate import (
    ConfigurationError,
    Message,
    Pipeline,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    Tool,
    ToolCall,
    ToolRoundsError,
    tool,
)
from chatstate.testing import FakeClock
from chatstate.window import is_valid_window

from .test_pipeline import SpyStore

pytestmark = pytest.mark.anyio  # on asyncio and on trio

INTERRUPTED = {"interrupted": True}


def _calls(*calls: tuple[str, str, dict[str, Any]], text: str | None = None) -> Message:
    return Message(
        role="assistant",
        content=text,
        tool_calls=tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in calls),
    )


def _results(messages: Sequence[Message]) -> dict[str, str]:
    """The results the model was given after the last user message, by call id."""
    return {m.tool_call_id or "": m.text for m in messages if m.role == "tool"}


def _model(*rounds: Message) -> ScriptedProvider:
    """Calls the tools of ``rounds`` in turn, then answers with every result it got."""

    def reply(messages: Sequence[Message]) -> Message | str:
        done = sum(1 for m in messages if m.role == "assistant" and m.tool_calls)
        if done < len(rounds):
            return rounds[done]
        return "answer: " + json.dumps(_results(messages), sort_keys=True)

    return ScriptedProvider(reply)


@tool
async def weather(city: str, unit: str = "C") -> dict[str, Any]:
    """The weather in a city now.

    More text that is not the description."""
    return {"city": city, "temp": 21, "unit": unit}


def _pipe(
    provider: Any,
    tools: Sequence[Tool],
    *,
    store: Any = None,
    policy: str = "discard",
    **options: Any,
) -> tuple[Pipeline, Any]:
    store = store if store is not None else SpyStore()
    state = StateMiddleware(store, StateMiddlewareConfig(on_interrupt=policy))  # type: ignore[arg-type]
    return Pipeline(state, ProviderMiddleware(provider, tools=tools, **options)), store


def test_a_tool_is_made_from_an_async_function() -> None:
    assert weather.name == "weather" and weather.description == "The weather in a city now."
    assert weather.schema() == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city now.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"title": "City", "type": "string"},
                    "unit": {"default": "C", "title": "Unit", "type": "string"},
                },
                "required": ["city"],
            },
        },
    }

    @tool(name="now", timeout=timedelta(seconds=1), description="")
    async def clock() -> str:
        return "12:00"

    assert clock.schema() == {
        "type": "function",
        "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
    }
    with pytest.raises(ConfigurationError, match="async"):
        tool(lambda: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigurationError, match="name"):
        Tool(name="", function=clock.function)
    with pytest.raises(ConfigurationError, match="unique"):
        ProviderMiddleware(ScriptedProvider(), tools=[clock, clock])
    with pytest.raises(ConfigurationError, match="Tool"):
        ProviderMiddleware(ScriptedProvider(), tools=[clock.function])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="max_tool_rounds"):
        ProviderMiddleware(ScriptedProvider(), tools=[clock], max_tool_rounds=-1)
    with pytest.raises(ConfigurationError, match="tool_timeout"):
        ProviderMiddleware(ScriptedProvider(), tool_timeout=timedelta(0))


async def test_a_tool_turn_runs_the_tool_asks_again_and_stores_the_turn_in_one_append() -> None:
    options: list[dict[str, Any]] = []
    asking = _calls(("c1", "weather", {"city": "Paris"}), text="Let me look.")
    model = _model(asking)
    original = model.complete

    async def complete(messages: Sequence[Message], **kwargs: Any) -> Message:
        options.append(kwargs)
        return await original(messages, **kwargs)

    model.complete = complete  # type: ignore[method-assign]
    pipe, store = _pipe(model, [weather])
    result = await pipe.execute_with_session("s", "user", "Weather in Paris?")
    answer = Message(
        role="tool",
        content='{"city":"Paris","temp":21,"unit":"C"}',
        name="weather",
        tool_call_id="c1",
    )
    assert result.new_messages == [
        Message(role="user", content="Weather in Paris?"),
        asking,
        answer,
        result.response,
    ]
    assert result.response.text == "answer: " + json.dumps({"c1": answer.text})
    assert await store.load("s") == result.new_messages and store.calls["append"] == 1
    assert options == [{"tools": [weather.schema()]}] * 2  # offered on every call
    assert result.messages[-2:] == [asking, answer] and is_valid_window(result.messages)


async def test_parallel_calls_run_concurrently_and_their_results_keep_the_calls_order() -> None:
    started: dict[str, anyio.Event] = {}

    def waiting_for(other: str) -> Tool:
        async def run() -> str:
            started[name].set()
            with anyio.fail_after(5):  # a deadlock, were the calls run one after the other
                await started[other].wait()
            return f"{name} done"

        name = "b" if other == "a" else "a"
        return Tool(name=name, function=run)

    started.update(a=anyio.Event(), b=anyio.Event())
    asking = _calls(("1", "a", {}), ("2", "b", {}))
    pipe, store = _pipe(_model(asking), [waiting_for("b"), waiting_for("a")])
    result = await pipe.execute_with_session("s", "user", "both")
    assert [m.text for m in result.new_messages[2:4]] == ["a done", "b done"]
    assert [m.tool_call_id for m in result.new_messages[2:4]] == ["1", "2"]
    assert await store.load("s") == result.new_messages


async def test_a_tool_that_fails_times_out_or_is_unknown_gives_the_model_an_error() -> None:
    clock = FakeClock()

    async def broken(**arguments: Any) -> str:
        raise RuntimeError("disk full")

    async def stuck(**arguments: Any) -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    asking = _calls(
        ("1", "broken", {}),
        ("2", "stuck", {}),
        ("3", "missing", {}),
        ("4", "weather", {"town": "Paris"}),
        ("5", "weather", {"city": "Oslo"}),
    )
    tools = [Tool(name="broken", function=broken), Tool(name="stuck", function=stuck), weather]
    pipe, store = _pipe(_model(asking), tools, clock=clock, tool_timeout=timedelta(seconds=5))
    async with anyio.create_task_group() as group:
        group.start_soon(pipe.execute_with_session, "s", "user", "go")
        await clock.sleeping()  # the stuck tool waits on its timeout
        clock.advance(5)
    stored = await store.load("s")
    results = stored[2:7]
    errors = [json.loads(m.text).get("error") if m.metadata else None for m in results]
    assert errors[0] == "the tool failed: RuntimeError: disk full"
    assert errors[1] == "the tool did not answer within 5 s"
    assert errors[2] == "there is no tool named 'missing'"
    assert errors[3] is not None and "city" in errors[3] and "invalid arguments" in errors[3]
    assert errors[4] is None and "Oslo" in results[4].text
    assert all(m.metadata == {"error": True} for m in results[:4])
    assert stored[-1].text.startswith("answer: ")  # the model answered, having seen the errors
    assert is_valid_window(stored)


async def test_a_tools_own_timeout_overrides_the_middlewares() -> None:
    clock = FakeClock()

    async def slow() -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    quick = Tool(name="slow", function=slow, timeout=timedelta(seconds=1))
    pipe, store = _pipe(_model(_calls(("1", "slow", {}))), [quick], clock=clock, tool_timeout=None)
    async with anyio.create_task_group() as group:
        group.start_soon(pipe.execute_with_session, "s", "user", "go")
        await clock.sleeping()
        clock.advance(1)
    assert "within 1 s" in (await store.load("s"))[2].text


async def test_more_rounds_than_the_bound_is_a_typed_error_and_nothing_is_stored() -> None:
    rounds = [_calls((f"c{n}", "weather", {"city": f"town {n}"})) for n in range(5)]
    pipe, store = _pipe(_model(*rounds), [weather], max_tool_rounds=2)
    with pytest.raises(ToolRoundsError, match="after 2 rounds") as caught:
        await pipe.execute_with_session("s", "user", "go")
    assert await store.load("s") == [] and store.calls["append"] == 0
    assert len(caught.value.messages) == 5  # the user's message and two whole exchanges
    assert is_valid_window(caught.value.messages)
    # Within the bound, the same model gets its answer.
    pipe, store = _pipe(_model(*rounds[:2]), [weather], max_tool_rounds=2)
    assert (await pipe.execute_with_session("s", "user", "go")).response.text.startswith("answer")


@pytest.mark.parametrize("policy", ["discard", "keep_partial"])
async def test_a_turn_cancelled_while_its_tools_run_never_stores_half_an_exchange(
    policy: str,
) -> None:
    reached = anyio.Event()

    async def hang(city: str) -> str:
        reached.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    first = _calls(("c1", "weather", {"city": "Paris"}))
    second = _calls(("c2", "hang", {"city": "Oslo"}), text="One more.")
    pipe, store = _pipe(_model(first, second), [weather, tool(hang)], policy=policy)
    async with anyio.create_task_group() as group:
        group.start_soon(pipe.execute_with_session, "s", "user", "go")
        await reached.wait()  # in the second round, its tool running
        group.cancel_scope.cancel()
    stored = await store.load("s")
    if policy == "discard":
        assert stored == [] and store.calls["append"] == 0
        return
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1] == first  # the whole first exchange, not the call left unanswered
    assert stored[-1] == Message(role="assistant", content="One more.", metadata=INTERRUPTED)
    assert is_valid_window(stored) and store.calls["append"] == 1


async def test_a_streamed_tool_turn_streams_every_round_and_the_final_reply() -> None:
    asking = _calls(("c1", "weather", {"city": "Rome"}), text="Checking.")
    pipe, store = _pipe(_model(asking), [weather])
    async with pipe, pipe.stream_with_session("s", "user", "Rome?") as turn:
        chunks = [chunk async for chunk in turn]
    messages = [chunk.message for chunk in chunks if chunk.message is not None]
    result = turn.result
    assert messages == result.new_messages[1:]  # the call, its result, the reply
    assert [m.role for m in messages] == ["assistant", "tool", "assistant"]
    text = "".join(chunk.text for chunk in chunks)
    assert text == "Checking." + result.response.text  # the text of both rounds, as written
    assert await store.load("s") == result.new_messages and store.calls["append"] == 1


async def test_a_streamed_tool_turn_left_while_its_tool_runs_keeps_whole_exchanges() -> None:
    reached = anyio.Event()

    async def hang() -> str:
        reached.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    asking = _calls(("c1", "hang", {}), text="Wait.")
    pipe, store = _pipe(_model(asking), [tool(hang)], policy="keep_partial")
    async with pipe:
        async with pipe.stream_with_session("s", "user", "go") as turn:
            async for chunk in turn:
                if chunk.message is not None:  # the call: leave while the tool runs
                    await reached.wait()
                    break
    assert turn.result.interrupted
    stored = await store.load("s")
    assert stored == [
        Message(role="user", content="go"),
        Message(role="assistant", content="Wait.", metadata=INTERRUPTED),
    ]
