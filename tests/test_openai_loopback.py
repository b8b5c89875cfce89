"""The OpenAI-compatible provider over real HTTP: a fake Chat Completions endpoint (Starlette on
uvicorn) on a free loopback port, streaming and tool calls included."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chatstate import Message, ProviderError, ToolCall
from chatstate.providers.openai import OpenAICompatibleProvider
from chatstate.testing.redis_server import find_free_port

KEY = "sk-loopback-secret"


async def completions(request: Request) -> Response:
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
    body = await request.json()
    last = body["messages"][-1]
    if last.get("content") == "use a tool":
        call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
    else:
        message = {"role": "assistant", "content": f"you said: {last['content']}"}
    if not body.get("stream"):
        return JSONResponse({"choices": [{"index": 0, "message": message}]})

    async def events() -> AsyncIterator[bytes]:
        for word in (message["content"] or "").split(" "):
            chunk = {"choices": [{"delta": {"content": word + " "}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = find_free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the fake endpoint did not start"
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


async def test_a_reply_a_stream_and_a_tool_call_over_real_http(endpoint: str) -> None:
    async with OpenAICompatibleProvider(base_url=endpoint, model="fake", api_key=KEY) as provider:
        reply = await provider.complete([Message(role="user", content="hello")])
        assert reply == Message(role="assistant", content="you said: hello")
        chunks = [chunk async for chunk in provider.stream([Message(role="user", content="a b")])]
        assert "".join(chunk.text for chunk in chunks) == "you said: a b "
        assert chunks[-1].message == Message(role="assistant", content="you said: a b ")
        called = await provider.complete([Message(role="user", content="use a tool")])
        assert called.tool_calls == (ToolCall(id="c1", name="clock", arguments="{}"),)


async def test_a_wrong_key_is_a_typed_error_that_does_not_show_the_key(endpoint: str) -> None:
    async with OpenAICompatibleProvider(base_url=endpoint, model="fake", api_key="sk-wrong") as p:
        with pytest.raises(ProviderError) as caught:
            await p.complete([Message(role="user", content="hello")])
    assert caught.value.status == 401 and "sk-wrong" not in str(caught.value)
