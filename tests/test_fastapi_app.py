"""examples/fastapi_app: the chat app, driven over HTTP with httpx against the real ASGI app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
import httpx
import pytest
from fastapi import FastAPI, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent
from httpx_sse import EventSource, aconnect_sse

from chatstate import (
    Message,
    Provider,
    ScriptedProvider,
    StateMiddlewareConfig,
    StreamChunk,
)
from chatstate.testing.redis_server import RedisServer
from examples.fastapi_app.app import create_app
from examples.fastapi_app.assistant import calculate, model_from_env, scripted_reply
from tests.gated_model import GatedModel
from tests.live_server import serve


@asynccontextmanager
async def _client(
    store_url: str = "memory://",
    provider: Provider | None = None,
    *,
    config: StateMiddlewareConfig | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store_url, provider or ScriptedProvider(scripted_reply), config=config)
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
    """Streams a turn and returns its reply, checking the events: the reply's text in chunks,
    the reply as stored, then done."""
    events = await _stream(client, session, content)
    *chunks, (message, reply), (last, done) = events
    assert (message, last) == ("message", "done"), events
    assert {name for name, _ in chunks} <= {"chunk"}
    assert reply == {"role": "assistant", "content": done["reply"]}
    assert "".join(data["text"] for _, data in chunks) == done["reply"]
    text: str = done["reply"]
    return text


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


async def test_a_tool_turn_streams_each_message_and_stores_the_exchange_whole() -> None:
    async with _client() as client:
        events = await _stream(client, "s", "calculate (2 + 3) * 4")
        call = {
            "role": "assistant",
            "tool_calls": [
                {"id": "call-1", "name": "calculate", "arguments": '{"expression": "(2 + 3) * 4"}'}
            ],
        }
        result = {"role": "tool", "content": "20", "name": "calculate", "tool_call_id": "call-1"}
        reply = {"role": "assistant", "content": "The answer is 20."}
        assert events == [
            ("message", call),
            ("message", result),
            *[("chunk", {"text": text}) for text in ("The ", "answer ", "is ", "20.")],
            ("message", reply),
            ("done", {"reply": "The answer is 20."}),
        ]
        user = {"role": "user", "content": "calculate (2 + 3) * 4"}
        assert await _history(client, "s") == [user, call, result, reply]
        # A tool that fails is an error result the model sees, not a failed turn.
        events = await _stream(client, "s", "calculate 1 / 0")
        assert events[1][1]["metadata"] == {"error": True}
        assert "division by zero" in events[1][1]["content"]


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
        for path in ("messages", "stream"):  # checked before a stream begins
            response = await client.post(f"/sessions/{long_id}/{path}", json={"content": "hi"})
            assert response.status_code == 400 and "session id" in response.json()["error"]
        assert await _history(client, "s") == []


async def test_a_failing_model_is_an_error_event_and_stores_nothing() -> None:
    async with _client(provider=ScriptedProvider([])) as client:  # no replies: it raises
        events = await _stream(client, "s", "hello")
        assert [name for name, _ in events] == ["error"]
        assert "ran out of replies" in events[0][1]["error"]
        response = await client.post("/sessions/s/messages", json={"content": "hello"})
        assert response.status_code == 502
        assert await _history(client, "s") == []


class _BreaksOff:
    """A model whose stream breaks off after its first chunk."""

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        raise AssertionError("a streamed turn streams")

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncIterator[StreamChunk]:
        yield StreamChunk("Once ")
        raise ConnectionResetError("the model's connection broke")


async def test_a_model_failing_mid_stream_is_an_error_event_after_the_chunks() -> None:
    async with _client(provider=_BreaksOff()) as client:
        events = await _stream(client, "s", "Tell me a story")
        assert [name for name, _ in events] == ["chunk", "error"]
        assert events[0][1] == {"text": "Once "}
        assert "the model's connection broke" in events[1][1]["error"]
        assert await _history(client, "s") == []  # a turn is stored whole or not at all


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


@pytest.mark.parametrize(
    ("on_interrupt", "stored"),
    [
        ("discard", []),
        (
            "keep_partial",
            [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Hello ", "metadata": {"interrupted": True}},
            ],
        ),
    ],
)
async def test_a_turn_cancelled_mid_stream_leaves_what_the_policy_says(
    on_interrupt: Literal["discard", "keep_partial"], stored: list[dict[str, Any]]
) -> None:
    config = StateMiddlewareConfig(on_interrupt=on_interrupt)
    # A turn left running would hold its session's lock and the app's shutdown for ever.
    with GatedModel() as model, anyio.fail_after(10):
        async with _client(provider=model, config=config) as client:
            async with anyio.create_task_group() as group:
                group.start_soon(_stream, client, "s", "hello")
                await model.write("Hello ")  # written, and taken by the pipeline
                group.cancel_scope.cancel()  # the request is gone mid-reply
            assert await _history(client, "s") == stored


async def test_a_turn_cancelled_mid_stream_on_redis_keeps_its_part_under_the_lease(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # The example's config for a shared store: a Redis lease per turn, keep_partial.
    with GatedModel() as model, anyio.fail_after(10):
        async with _client(redis_server.url, provider=model) as client:
            session = f"{key_prefix}-dave"
            async with anyio.create_task_group() as group:
                group.start_soon(_stream, client, session, "hello")
                await model.write("Hello ")
                group.cancel_scope.cancel()
            assert await _history(client, session) == [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Hello ", "metadata": {"interrupted": True}},
            ]
            # The lease was given back: the session's next turn runs at once.
            response = await client.post(f"/sessions/{session}/messages", json={"content": "hi"})
            assert response.json() == {"reply": "OK"}
            await client.delete(f"/sessions/{session}")


async def test_a_client_that_hangs_up_mid_stream_over_a_real_socket() -> None:
    with GatedModel() as model:
        app = create_app("memory://", model)  # the example's policy: keep_partial
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            request = client.build_request("POST", "/sessions/s/stream", json={"content": "hi"})
            response = await client.send(request, stream=True)
            source = EventSource(response)
            events = source.aiter_sse()
            await model.write("Hello ")
            first = await anext(events)
            assert (first.event, first.json()) == ("chunk", {"text": "Hello "})
            await response.aclose()  # the client hangs up mid-reply
            # The next turn of the session waits for the interrupted one to be stored.
            reply = await client.post("/sessions/s/messages", json={"content": "Still there?"})
            assert reply.json() == {"reply": "OK"}
            assert await _history(client, "s") == [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello ", "metadata": {"interrupted": True}},
                {"role": "user", "content": "Still there?"},
                {"role": "assistant", "content": "OK"},
            ]


async def test_a_reply_arrives_chunk_by_chunk_over_a_real_socket() -> None:
    with GatedModel() as model:
        app = create_app("memory://", model)
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            turn = {"content": "Tell me a story"}
            async with aconnect_sse(client, "POST", "/sessions/s/stream", json=turn) as source:
                events = source.aiter_sse()
                # Each chunk reaches the client before the model has written the next one.
                for text in ("Once ", "upon ", "a ", "time."):
                    await model.write(text)
                    event = await anext(events)
                    assert (event.event, event.json()) == ("chunk", {"text": text})
                await model.finish()
                rest = [(event.event, event.json()) async for event in events]
            assert rest == [
                ("message", {"role": "assistant", "content": "Once upon a time."}),
                ("done", {"reply": "Once upon a time."}),
            ]
            assert len(await _history(client, "s")) == 2


class _EveryFirstChunkFirst:
    """A model that writes "Hello ", then waits until every client has read its first chunk
    before it writes the rest: the streams are all open at once, over real sockets."""

    def __init__(self, sessions: int) -> None:
        self.sessions = sessions
        self.read = 0
        self.all_read = anyio.Event()

    def first_chunk_read(self) -> None:
        self.read += 1
        if self.read == self.sessions:
            self.all_read.set()

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        raise AssertionError("a streamed turn streams")

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncIterator[StreamChunk]:
        name = messages[-1].text
        yield StreamChunk("Hello ")
        with anyio.fail_after(10):
            await self.all_read.wait()
        yield StreamChunk(f"{name}!")
        yield StreamChunk("", Message(role="assistant", content=f"Hello {name}!"))


async def test_fifty_sessions_stream_at_once_over_real_sockets() -> None:
    model = _EveryFirstChunkFirst(sessions=50)
    async with serve(create_app("memory://", model)) as url:
        async with httpx.AsyncClient(base_url=url) as client:

            async def converse(n: int) -> None:
                turn = {"content": f"user{n}"}
                path = f"/sessions/user-{n}/stream"
                async with aconnect_sse(client, "POST", path, json=turn) as source:
                    events = source.aiter_sse()
                    first = await anext(events)
                    assert (first.event, first.json()) == ("chunk", {"text": "Hello "})
                    model.first_chunk_read()
                    rest = [(event.event, event.json()) async for event in events]
                assert rest[-1] == ("done", {"reply": f"Hello user{n}!"})

            async with anyio.create_task_group() as group:
                for n in range(model.sessions):
                    group.start_soon(converse, n)
            for n in (0, 49):
                assert await _history(client, f"user-{n}") == [
                    {"role": "user", "content": f"user{n}"},
                    {"role": "assistant", "content": f"Hello user{n}!"},
                ]


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
    assert calculate.name == "calculate"
    assert calculate.parameters["required"] == ["expression"]
    assert await calculate({"expression": "6 * 7"}) == "42"
    assert await calculate({"expression": "(2 + 3) * -4 / 8"}) == "-2.5"
    assert await calculate({"expression": "2 ** 10"}) == "1024"
    for bad in ("__import__('os')", "x + 1", "2 ** 1000", "'a' * 3", "True + 1"):
        with pytest.raises(ValueError):
            await calculate({"expression": bad})
    with pytest.raises(SyntaxError):
        await calculate({"expression": "2 +"})


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


def _fake_chat_completions(seen: list[tuple[str | None, dict[str, Any]]]) -> FastAPI:
    """A Chat Completions endpoint that streams: a call of ``calculate`` for what the user
    asks, then the tool's result in words."""
    fake = FastAPI()

    @fake.post("/v1/chat/completions", response_class=EventSourceResponse)
    async def completions(
        body: dict[str, Any], authorization: Annotated[str | None, Header()] = None
    ) -> AsyncIterator[ServerSentEvent]:
        seen.append((authorization, body))
        last = body["messages"][-1]
        if last["role"] == "tool":
            deltas: list[dict[str, Any]] = [
                {"content": text} for text in ("The ", "answer ", "is ", f"{last['content']}.")
            ]
        else:
            arguments = json.dumps({"expression": last["content"]})
            call = {"index": 0, "id": "c1", "function": {"name": "calculate"}}
            deltas = [
                {"tool_calls": [call]},
                {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]},
            ]
        for delta in deltas:
            yield ServerSentEvent(raw_data=json.dumps({"choices": [{"delta": delta}]}))
        yield ServerSentEvent(raw_data="[DONE]")

    return fake


async def test_the_model_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, dict[str, Any]]] = []
    async with serve(_fake_chat_completions(seen)) as endpoint:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{endpoint}/v1")
        monkeypatch.setenv("OPENAI_MODEL", "fake-model")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        app = create_app("memory://")  # the model from the environment
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://app"
            ) as client,
        ):
            events = await _stream(client, "s", "6 * 7")
    assert [name for name, _ in events] == ["message", "message", *["chunk"] * 4, "message", "done"]
    assert events[0][1]["tool_calls"][0]["name"] == "calculate"
    assert events[1][1]["content"] == "42"
    assert events[-1] == ("done", {"reply": "The answer is 42."})
    [(key, first), (_, second)] = seen
    assert key == "Bearer sk-test"
    assert first["model"] == "fake-model" and first["stream"] is True
    assert [tool["function"]["name"] for tool in first["tools"]] == ["calculate"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]


async def test_without_an_endpoint_in_the_environment_the_model_is_offline() -> None:
    for environ in ({}, {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}):
        async with model_from_env(environ) as model:
            assert isinstance(model, ScriptedProvider)
