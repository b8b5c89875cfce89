"""examples/webapp: the chat service, driven over HTTP with httpx against the real ASGI app."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from chatstate.testing.redis_server import RedisServer

_SPEC = importlib.util.spec_from_file_location(
    "webapp", Path(__file__).resolve().parent.parent / "examples" / "webapp" / "app.py"
)
assert _SPEC is not None and _SPEC.loader is not None
webapp: Any = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(webapp)


@asynccontextmanager
async def _client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = webapp.create_app(store_url)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))  # startup, shutdown
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://app")
        )


async def _say(client: httpx.AsyncClient, session: str, content: str) -> str:
    response = await client.post(f"/sessions/{session}/messages", json={"content": content})
    assert response.status_code == 201, response.text
    reply: str = response.json()["reply"]
    return reply


async def test_a_conversation_over_http() -> None:
    async with _client("memory://") as client:
        await _say(client, "alice", "My name is Alice")
        assert "Alice" in await _say(client, "alice", "What's my name?")
        assert "don't know" in await _say(client, "bob", "What's my name?")
        history = (await client.get("/sessions/alice/messages")).json()["messages"]
        assert [m["role"] for m in history] == ["user", "assistant"] * 2
        assert history[0] == {"role": "user", "content": "My name is Alice"}
        assert (await client.delete("/sessions/alice")).json() == {"deleted": True}
        assert (await client.get("/sessions/alice/messages")).json() == {"messages": []}


async def test_bad_requests_get_clear_errors_and_change_nothing() -> None:
    async with _client("memory://") as client:
        for body in ({}, {"content": ""}, {"content": 42}, ["x"]):
            response = await client.post("/sessions/s/messages", json=body)
            assert response.status_code == 400 and "content" in response.json()["error"]
        response = await client.post(
            "/sessions/s/messages", content=b"not json", headers={"content-type": "text/plain"}
        )
        assert response.status_code == 400
        long_id = "x" * 300
        response = await client.post(f"/sessions/{long_id}/messages", json={"content": "hi"})
        assert response.status_code == 400 and "session id" in response.json()["error"]
        assert (await client.get("/sessions/s/messages")).json() == {"messages": []}


async def test_concurrent_requests_on_one_session_and_on_many() -> None:
    async with _client("memory://") as client:
        async with anyio.create_task_group() as group:
            for n in range(20):
                group.start_soon(_say, client, "busy", f"message {n}")
        async with anyio.create_task_group() as group:
            for n in range(50):
                group.start_soon(_say, client, f"user-{n}", "hello")
        history = (await client.get("/sessions/busy/messages")).json()["messages"]
        assert len(history) == 40  # every turn, whole: user then assistant, never interleaved
        assert all(
            first["role"] == "user" and second["role"] == "assistant"
            for first, second in zip(history[::2], history[1::2], strict=True)
        )
        assert len((await client.get("/sessions/user-7/messages")).json()["messages"]) == 2


async def test_two_instances_sharing_redis_keep_one_conversation(
    redis_server: RedisServer, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATSTATE_STORE", redis_server.url)
    async with _client(redis_server.url) as first, _client(redis_server.url) as second:
        session = f"{key_prefix}-carol"
        await _say(first, session, "My name is Carol")
        assert "Carol" in await _say(second, session, "What's my name?")
        # Both instances at once, on one session: the Redis lease serialises the turns.
        async with anyio.create_task_group() as group:
            for n in range(10):
                for client in (first, second):
                    group.start_soon(_say, client, session, f"turn {n}")
        history = (await first.get(f"/sessions/{session}/messages")).json()["messages"]
        assert len(history) == 2 * 22
        assert all(
            m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(history)
        )
        await second.delete(f"/sessions/{session}")
