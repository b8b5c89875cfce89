"""examples/fastapi_app: the chat app, driven over HTTP with httpx against the real ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from chatstate import Message, OpenAICompatibleProvider, Provider, ScriptedProvider
from chatstate.testing.redis_server import RedisServer
from examples.fastapi_app.app import create_app
from examples.fastapi_app.assistant import calculate, provider_from_env, scripted_reply
from tests.live_server import serve


@asynccontextmanager
async def _client(
    store_url: str = "memory://", provider: Provider | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store_url, provider or ScriptedProvider(scripted_reply))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))  # startup, shutdown
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://app")
        )


async def _stream(client: httpx.AsyncClient, session: str, content: str) -> list[tuple[str, Any]]:
    """The events of one streamed turn, as (name, data)."""
    url = f"/sessions/{session}/stream"
    async with aconnect_sse(client, "POST", url, json={"content": content}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(event.event, event.json()) async for event in source.aiter_sse()]


async def _say(client: httpx.AsyncClient, session: str, content: str) -> str:
    """Streams a turn and returns its reply, checking that the chunks make it up."""
    events = await _stream(client, session, content)
    *chunks, (last, done) = events
    assert last == "done", events
    assert all(name == "chunk" for name, _ in chunks)
    assert "".join(data["text"] for _, data in chunks).strip() == done["reply"]
    reply: str = done["reply"]
    return reply


async def _history(client: httpx.AsyncClient, session: str) -> list[dict[str, Any]]:
    response = await client.get(f"/sessions/{session}/messages")
    assert response.status_code == 200
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def test_a_conversation_streamed_over_sse() -> None:
    async with _client() as client:
        assert await _say(client, "alice", "My name is Alice") == "Nice to meet you, Alice!"
        assert await _say(client, "alice", "What's my name?") == "Your name is Alice."
        assert await _say(client, "bob", "What's my name?") == "I don't know your name yet."
        history = await _history(client, "alice")
        assert history == [
            {"role": "user", "content": "My name is Alice"},
            {"role": "assistant", "content": "Nice to meet you, Alice!"},
            {"role": "user", "content": "What's my name?"},
            {"role": "assistant", "content": "Your name is Alice."},
        ]
        assert (await client.delete("/sessions/alice")).json() == {"deleted": True}
        assert await _history(client, "alice") == []


async def test_a_whole_turn_over_json() -> None:
    async with _client() as client:
        response = await client.post("/sessions/s/messages", json={"content": "Call me Al"})
        assert response.status_code == 201
        assert response.json() == {"reply": "Nice to meet you, Al!"}
        assert len(await _history(client, "s")) == 2


async def test_the_page_is_served() -> None:
    async with _client() as client:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert '<form id="form">' in response.text


async def test_bad_requests_get_clear_errors_and_change_nothing() -> None:
    async with _client() as client:
        for path in ("/sessions/s/messages", "/sessions/s/stream"):
            for body in ({}, {"content": ""}, {"content": "  "}, {"content": 42}, ["x"]):
                response = await client.post(path, json=body)
                assert response.status_code == 422, (path, body, response.text)
                assert response.json()["detail"][0]["loc"][0] == "body"
            response = await client.post(
                path, content=b"not json", headers={"content-type": "application/json"}
            )
            assert response.status_code == 422
        long_id = "x" * 300
        response = await client.post(f"/sessions/{long_id}/messages", json={"content": "hi"})
        assert response.status_code == 400 and "session id" in response.json()["error"]
        # A stream has answered 200 before the turn runs: its error comes as an event.
        events = await _stream(client, long_id, "hi")
        assert [name for name, _ in events] == ["error"]
        assert "session id" in events[0][1]["error"]
        assert await _history(client, "s") == []


async def test_a_failing_model_is_an_error_event_and_stores_nothing() -> None:
    async with _client(provider=ScriptedProvider([])) as client:  # no replies: it raises
        events = await _stream(client, "s", "hello")
        assert [name for name, _ in events] == ["error"]
        assert "ran out of replies" in events[0][1]["error"]
        response = await client.post("/sessions/s/messages", json={"content": "hello"})
        assert response.status_code == 502
        assert await _history(client, "s") == []


async def test_fifty_sessions_stream_at_once_and_turns_of_one_session_never_interleave() -> None:
    sessions = 50
    arrived = 0
    all_in = anyio.Event()

    async def reply_when_all_are_in(messages: Sequence[Message]) -> str | Message:
        # Every session's turn is in the provider at once before any answers: 50 turns in
        # flight together, not one after another.
        nonlocal arrived
        if messages[-1].text.startswith("My name is"):
            arrived += 1
            if arrived == sessions:
                all_in.set()
            with anyio.fail_after(10):
                await all_in.wait()
        return scripted_reply(messages)

    async with _client(provider=ScriptedProvider(reply_when_all_are_in)) as client:

        async def converse(n: int) -> None:
            assert await _say(client, f"user-{n}", f"My name is User{n}") == (
                f"Nice to meet you, User{n}!"
            )
            assert await _say(client, f"user-{n}", "What's my name?") == f"Your name is User{n}."

        async with anyio.create_task_group() as group:
            for n in range(sessions):
                group.start_soon(converse, n)
        assert all_in.is_set()
        for n in (0, 17, 49):
            assert len(await _history(client, f"user-{n}")) == 4

        async with anyio.create_task_group() as group:
            for n in range(20):
                group.start_soon(_say, client, "busy", f"message {n}")
        history = await _history(client, "busy")
        assert len(history) == 40  # every turn, whole: user then assistant, never interleaved
        assert all(
            first["role"] == "user" and second["role"] == "assistant"
            for first, second in zip(history[::2], history[1::2], strict=True)
        )


async def test_a_turn_cancelled_mid_way_stores_nothing() -> None:
    started = anyio.Event()

    async def never_answers(messages: Sequence[Message]) -> str:
        started.set()
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    async with _client(provider=ScriptedProvider(never_answers)) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(_stream, client, "s", "hello")
            with anyio.fail_after(5):
                await started.wait()
            group.cancel_scope.cancel()  # the client is gone
        assert await _history(client, "s") == []


async def test_a_client_that_hangs_up_mid_turn_cancels_it_and_nothing_is_stored() -> None:
    started, cancelled = anyio.Event(), anyio.Event()

    async def never_answers(messages: Sequence[Message]) -> str:
        started.set()
        try:
            await anyio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    app = create_app("memory://", ScriptedProvider(never_answers))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        turn = {"content": "hello"}
        async with client.stream("POST", "/sessions/s/stream", json=turn) as response:
            assert response.status_code == 200
            with anyio.fail_after(5):
                await started.wait()
        # The response was left unread: httpx closed the connection, and the server saw it.
        with anyio.fail_after(5):
            await cancelled.wait()
        assert await _history(client, "s") == []


@pytest.mark.redis
async def test_two_instances_sharing_redis_keep_one_conversation(
    redis_server: RedisServer, key_prefix: str
) -> None:
    async with _client(redis_server.url) as first, _client(redis_server.url) as second:
        session = f"{key_prefix}-carol"
        await _say(first, session, "My name is Carol")
        assert await _say(second, session, "What's my name?") == "Your name is Carol."
        # Both instances at once, on one session: the Redis lease serialises the turns.
        async with anyio.create_task_group() as group:
            for n in range(10):
                for client in (first, second):
                    group.start_soon(_say, client, session, f"turn {n}")
        history = await _history(first, session)
        assert len(history) == 2 * 22
        assert all(
            m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(history)
        )
        await second.delete(f"/sessions/{session}")


async def test_the_calculator_tool() -> None:
    assert await calculate("6 * 7") == "42"
    assert await calculate("(2 + 3) * -4 / 8") == "-2.5"
    assert await calculate("2 ** 10") == "1024"
    for bad in ("__import__('os')", "x + 1", "2 ** 1000", "'a' * 3"):
        with pytest.raises(ValueError):
            await calculate(bad)
    with pytest.raises(SyntaxError):
        await calculate("2 +")


def test_the_offline_model_calls_the_tool_for_arithmetic() -> None:
    reply = scripted_reply([Message(role="user", content="calculate 6 * 7")])
    assert isinstance(reply, Message)
    [call] = reply.tool_calls
    assert (call.name, call.args) == ("calculate", {"expression": "6 * 7"})
    tool_result = Message(role="tool", content="42", tool_call_id=call.id)
    assert scripted_reply([reply, tool_result]) == "The answer is 42."
    assert scripted_reply([Message(role="user", content="what is love?")]) == (
        "You said: what is love?"
    )


async def test_the_model_comes_from_the_environment() -> None:
    assert isinstance(provider_from_env({}), ScriptedProvider)
    assert isinstance(
        provider_from_env({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}), ScriptedProvider
    )
    provider = provider_from_env(
        {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MODEL": "m", "OPENAI_API_KEY": "k"}
    )
    assert isinstance(provider, OpenAICompatibleProvider)
    assert (provider.base_url, provider.model) == ("http://127.0.0.1:9/v1", "m")
    await provider.aclose()
