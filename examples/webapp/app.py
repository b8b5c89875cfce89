"""A chat service on Starlette with chatstate: each session's history lives in the store.

    POST   /sessions/{id}/messages   {"content": "..."} -> runs a turn: {"reply": "...", ...}
    GET    /sessions/{id}/messages   -> the stored history
    DELETE /sessions/{id}            -> forgets the session

The store comes from $CHATSTATE_STORE (default memory://; redis://host:port/db shares the
conversations between every instance of the app, whose turns a Redis lease serialises).
Run it with:  uvicorn examples.webapp.app:app --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chatstate import (
    InvalidInputError,
    Pipeline,
    Provider,
    ProviderError,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
    StoreError,
    open_store,
)


def create_app(store_url: str | None = None, provider: Provider | None = None) -> Starlette:
    """The app, on the store at ``store_url`` (default: $CHATSTATE_STORE or memory://)."""
    url = store_url or os.environ.get("CHATSTATE_STORE", "memory://")
    shared = not url.startswith("memory://")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_store(url) as store:
            config = StateMiddlewareConfig(
                max_messages=50,
                ttl=timedelta(days=7),
                # Several instances share a Redis store: serialise each session's turns across
                # all of them, not only within this process.
                lease_ttl=timedelta(seconds=30) if shared else None,
            )
            app.state.store = store
            async with Pipeline(
                StateMiddleware(store, config),
                ProviderMiddleware(provider or ScriptedProvider()),
            ) as app.state.pipe:  # owns what goes on after the turns, until shutdown
                yield

    async def post_message(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'the body must be JSON: {"content": "..."}')
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str) or not content.strip():
            return _error(400, "content must be a non-empty string")
        result = await request.app.state.pipe.execute_with_session(
            request.path_params["session_id"], "user", content
        )
        return JSONResponse(
            {"reply": result.response.text, "timings": result.timings}, status_code=201
        )

    async def get_messages(request: Request) -> JSONResponse:
        messages = await request.app.state.store.load(request.path_params["session_id"])
        return JSONResponse(
            {"messages": [m.model_dump(mode="json", exclude_defaults=True) for m in messages]}
        )

    async def delete_session(request: Request) -> JSONResponse:
        existed = await request.app.state.store.delete(request.path_params["session_id"])
        return JSONResponse({"deleted": existed})

    return Starlette(
        routes=[
            Route("/sessions/{session_id}/messages", post_message, methods=["POST"]),
            Route("/sessions/{session_id}/messages", get_messages, methods=["GET"]),
            Route("/sessions/{session_id}", delete_session, methods=["DELETE"]),
        ],
        exception_handlers={
            InvalidInputError: _handler(400),
            ProviderError: _handler(502),
            StoreError: _handler(503),
        },
        lifespan=lifespan,
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _handler(status: int) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return _error(status, str(exc))

    return handle


app = create_app()
