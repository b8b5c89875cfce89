"""A chat app on FastAPI with chatstate: each session's history lives in the store, replies stream.

    GET    /                            -> the chat page (HTML; the reply streams in, a reload
                                           shows the history)
    POST   /sessions/{id}/stream        {"content": "..."} -> the turn as Server-Sent Events:
                                           ``chunk`` ({"text": ...}) as the model writes,
                                           ``message`` (a message of the turn as stored: the
                                           reply, a tool call, a tool's result) as each ends,
                                           then ``done`` ({"reply": ...}) or ``error``
                                           ({"error": ...})
    POST   /sessions/{id}/messages      {"content": "..."} -> the whole turn: {"reply": "..."}
    GET    /sessions/{id}/messages      -> the stored history
    DELETE /sessions/{id}               -> forgets the session

The store comes from $CHATSTATE_STORE (default memory://; redis://host:port/db shares the
conversations between every instance of the app, whose turns a Redis lease serialises); the model
from $OPENAI_BASE_URL and $OPENAI_MODEL, or an offline scripted one (see ``assistant.py``).
Run it from the repository's root with:  uvicorn examples.fastapi_app.app:app --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field, StringConstraints

from chatstate import (
    ChatStateError,
    InvalidInputError,
    Message,
    Pipeline,
    Provider,
    ProviderError,
    ProviderMiddleware,
    StateMiddleware,
    StateMiddlewareConfig,
    StateStore,
    StoreError,
    StreamedTurn,
    open_store,
)

from .assistant import TOOLS, model_from_env

PAGE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")


class Turn(BaseModel):
    """The body of a turn: what the user says."""

    content: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Reply(BaseModel):
    """A whole turn's answer."""

    reply: str


class History(BaseModel):
    """A session's stored messages, oldest first (as ``Message.model_dump``)."""

    messages: list[dict[str, Any]] = Field(default_factory=list)


def create_app(
    store_url: str | None = None,
    provider: Provider | None = None,
    *,
    config: StateMiddlewareConfig | None = None,
) -> FastAPI:
    """The app, on the store at ``store_url`` (default: $CHATSTATE_STORE or memory://), with
    ``provider`` (default: from the environment, see ``assistant.model_from_env``)."""
    url = store_url or os.environ.get("CHATSTATE_STORE", "memory://")
    shared = not url.startswith("memory://")
    if config is None:
        config = StateMiddlewareConfig(
            max_messages=50,
            ttl=timedelta(days=7),
            # Several instances share a Redis store: serialise each session's turns across all
            # of them, not only within this process.
            lease_ttl=timedelta(seconds=30) if shared else None,
            # A reply cut off by a client gone is kept as far as it was sent, marked
            # {"interrupted": true}: what the user saw, for them and for the model next time.
            on_interrupt="keep_partial",
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            open_store(url) as store,
            model_from_env() if provider is None else nullcontext(provider) as model,
            # The pipeline owns what a turn leaves running (streamed turns, summaries) until
            # shutdown.
            Pipeline(
                StateMiddleware(store, config), ProviderMiddleware(model, tools=TOOLS)
            ) as pipe,
        ):
            app.state.store, app.state.pipe = store, pipe
            yield

    app = FastAPI(title="chatstate chat", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.post("/sessions/{session_id}/stream", response_class=EventSourceResponse)
    async def stream_turn(
        streamed: Annotated[StreamedTurn, Depends(_streamed_turn, scope="request")],
    ) -> AsyncIterator[ServerSentEvent]:
        try:
            async for chunk in streamed:
                if chunk.text:
                    yield ServerSentEvent(event="chunk", data={"text": chunk.text})
                if chunk.message is not None:  # a message of the turn ends: as stored
                    yield ServerSentEvent(event="message", data=_as_json(chunk.message))
            result = streamed.result
        except ChatStateError as exc:
            # The response has begun (200, text/event-stream): an error is an event.
            yield ServerSentEvent(event="error", data={"error": str(exc)})
            return
        yield ServerSentEvent(event="done", data={"reply": result.response.text})

    @app.post("/sessions/{session_id}/messages", status_code=201)
    async def post_message(session_id: str, turn: Turn, request: Request) -> Reply:
        pipe: Pipeline = request.app.state.pipe
        result = await pipe.execute_with_session(session_id, "user", turn.content)
        return Reply(reply=result.response.text)

    @app.get("/sessions/{session_id}/messages")
    async def get_messages(session_id: str, request: Request) -> History:
        store: StateStore = request.app.state.store
        messages = await store.load(session_id)
        return History(messages=[_as_json(message) for message in messages])

    @app.delete("/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> dict[str, bool]:
        store: StateStore = request.app.state.store
        return {"deleted": await store.delete(session_id)}

    for error, status in ((InvalidInputError, 400), (ProviderError, 502), (StoreError, 503)):
        app.add_exception_handler(error, _answer_with(status))
    return app


async def _streamed_turn(
    session_id: str, turn: Turn, request: Request
) -> AsyncIterator[StreamedTurn]:
    """The request's streamed turn, entered before its response and left after it.

    Not in the endpoint's generator: FastAPI stops that generator where it stands when the client
    hangs up, and may never close it (it is left to the garbage collector), so a block in it might
    never be left. Here, the block is left once the response has ended, whole or cut off: a turn
    that had not ended is interrupted then, and the store keeps what ``on_interrupt`` says. Bad
    input (a bad session id) raises here, before the response begins: a 400, not an event.
    """
    pipe: Pipeline = request.app.state.pipe
    async with pipe.stream_with_session(session_id, "user", turn.content) as streamed:
        yield streamed


def _as_json(message: Message) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude_defaults=True)


def _answer_with(status: int) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handle


app = create_app()
