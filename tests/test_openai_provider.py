"""The OpenAI-compatible provider against a fake endpoint (httpx's MockTransport: no network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from chatstate import (
    ConfigurationError,
    ImagePart,
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderError,
    ProviderMiddleware,
    StateMiddleware,
    TextPart,
    ToolCall,
    tool,
)
from chatstate.providers.openai import OpenAICompatibleProvider

KEY = "sk-test-0123456789-secret"
Handler = Callable[[httpx.Request], httpx.Response]


def _provider(handler: Handler, **options: Any) -> OpenAICompatibleProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    options.setdefault("backoff", timedelta(0))
    return OpenAICompatibleProvider(
        base_url="https://llm.example/v1", model="m-1", api_key=KEY, client=client, **options
    )


def _answer(message: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"index": 0, "message": message}]})


async def test_a_turn_goes_out_in_the_chat_completions_format_and_comes_back() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "https://llm.example/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        seen.append(json.loads(request.content))
        return _answer({"role": "assistant", "content": "Hello, Alice."})

    provider = _provider(handler, options={"temperature": 0.1})
    history = [
        Message(role="system", content="Be brief."),
        Message(
            role="user",
            content=(TextPart(text="Who is this?"), ImagePart(url="https://x/a.png", detail="low")),
            name="alice",
        ),
        Message(
            role="assistant",
            content=None,
            tool_calls=(ToolCall(id="c1", name="lookup", arguments='{"q": "alice"}'),),
        ),
        Message(role="tool", content='{"found": true}', tool_call_id="c1"),
    ]
    reply = await provider.complete(history, max_tokens=50)
    assert reply == Message(role="assistant", content="Hello, Alice.")
    assert seen[0] == {
        "model": "m-1",
        "temperature": 0.1,
        "max_tokens": 50,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Who is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
                ],
                "name": "alice",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "alice"}'},
                    }
                ],
            },
            {"role": "tool", "content": '{"found": true}', "tool_call_id": "c1"},
        ],
    }
    await provider.aclose()


async def test_tool_calls_in_a_reply_come_back_as_tool_calls() -> None:
    call = {"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    provider = _provider(
        lambda _: _answer({"role": "assistant", "content": None, "tool_calls": [call]})
    )
    reply = await provider.complete([Message(role="user", content="go")])
    assert reply.tool_calls == (ToolCall(id="c9", name="f", arguments='{"a":1}'),)
    assert reply.content is None


async def test_429_and_5xx_are_retried_and_a_client_error_is_not() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow"}}),
            httpx.Response(503, text="overloaded"),
            _answer({"role": "assistant", "content": "at last"}),
        ]
    )
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return next(answers)

    assert (await _provider(flaky).complete([Message(role="user", content="hi")])).text == "at last"
    assert len(calls) == 3

    def bad_request(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "unknown model m-1"}})

    calls.clear()
    with pytest.raises(ProviderError) as caught:
        await _provider(bad_request).complete([Message(role="user", content="hi")])
    assert len(calls) == 1  # not retried: it would fail again
    assert caught.value.status == 400 and caught.value.provider_message == "unknown model m-1"
    assert "400" in str(caught.value) and KEY not in str(caught.value)


async def test_retries_end_with_a_typed_error_that_never_shows_the_key() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    provider = _provider(down, max_retries=2)
    with pytest.raises(ProviderError, match="could not be reached") as caught:
        await provider.complete([Message(role="user", content="hi")])
    shown = [str(caught.value), repr(caught.value), repr(provider)]
    cause = caught.value.__cause__
    shown.append(repr(cause))
    assert all(KEY not in text for text in shown)

    def always_500(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom"}})

    with pytest.raises(ProviderError) as failed:
        await _provider(always_500, max_retries=1).complete([Message(role="user", content="x")])
    assert failed.value.status == 500


def _sse(*events: dict[str, Any]) -> httpx.Response:
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


async def test_streaming_yields_text_then_the_whole_reply() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return _sse(
            {"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]},
            {"choices": [{"delta": {"content": "lo"}}]},
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
        )

    chunks = [
        chunk async for chunk in _provider(handler).stream([Message(role="user", content="hi")])
    ]
    assert [chunk.text for chunk in chunks] == ["Hel", "lo", ""]
    assert chunks[-1].message == Message(role="assistant", content="Hello")


async def test_streamed_tool_calls_are_assembled() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        first = {"index": 0, "id": "c1", "function": {"name": "look", "arguments": '{"q"'}}
        rest = {"index": 0, "function": {"arguments": ': "x"}'}}
        return _sse(
            {"choices": [{"delta": {"tool_calls": [first]}}]},
            {"choices": [{"delta": {"tool_calls": [rest]}}]},
        )

    chunks = [
        chunk async for chunk in _provider(handler).stream([Message(role="user", content="q")])
    ]
    assert chunks[-1].message is not None
    assert chunks[-1].message.tool_calls == (
        ToolCall(id="c1", name="look", arguments='{"q": "x"}'),
    )


async def test_it_plugs_into_a_pipeline_and_bad_answers_are_provider_errors() -> None:
    provider = _provider(lambda _: _answer({"role": "assistant", "content": "ok"}))
    pipe = Pipeline(StateMiddleware(InMemoryStateStore()), ProviderMiddleware(provider))
    assert (await pipe.execute_with_session("s", "user", "hi")).response.text == "ok"
    for broken in (
        httpx.Response(200, json={"nothing": "here"}),
        httpx.Response(200, text="not json"),
        _answer({"role": "assistant"}),  # no content and no tool calls
    ):
        with pytest.raises(ProviderError):
            await _provider(lambda _, answer=broken: answer).complete(
                [Message(role="user", content="x")]
            )


def test_bad_configuration_is_rejected() -> None:
    for options in (
        {"base_url": "ftp://x", "model": "m"},
        {"base_url": "http://x", "model": ""},
        {"base_url": "http://x", "model": "m", "max_retries": -1},
    ):
        with pytest.raises(ConfigurationError):
            OpenAICompatibleProvider(**options)


async def test_a_streamed_tool_turn_through_the_pipeline_speaks_the_api() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if body["messages"][-1]["role"] == "user":
            call = {"index": 0, "id": "c1", "function": {"name": "weather", "arguments": "{}"}}
            return _sse({"choices": [{"delta": {"tool_calls": [call]}}]})
        return _sse(
            {"choices": [{"delta": {"content": "Sunny, "}}]},
            {"choices": [{"delta": {"content": "21 C."}}]},
        )

    @tool
    async def weather() -> str:
        """The weather here."""
        return "sunny, 21 C"

    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(_provider(handler), tools=[weather]))
    async with pipe, pipe.stream_with_session("s", "user", "Weather?") as turn:
        texts = [chunk.text async for chunk in turn if chunk.text]
    assert texts == ["Sunny, ", "21 C."]
    assert all(body["stream"] is True for body in bodies)
    assert bodies[0]["tools"] == [weather.schema()]
    assert [m["role"] for m in bodies[1]["messages"]] == ["user", "assistant", "tool"]
    assert bodies[1]["messages"][2] == {
        "role": "tool",
        "content": "sunny, 21 C",
        "name": "weather",
        "tool_call_id": "c1",
    }
    stored = await store.load("s")
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[-1].text == "Sunny, 21 C." == turn.result.response.text
