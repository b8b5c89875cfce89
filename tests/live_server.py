"""A real HTTP server for an ASGI app in the test's own event loop: uvicorn on a loopback port,
for what an in-process transport cannot show (httpx's ASGITransport hands over a response only
once the app has finished it, so it can neither read a stream as it comes nor hang up on one)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn

__all__ = ["serve"]


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan included) on a free loopback port; yields its base URL.

    The socket listens before uvicorn starts, so a client may connect at once: its connection
    waits in the backlog until the app has started, and nobody polls for readiness.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    host, port = listener.getsockname()
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="on", log_config=None, timeout_graceful_shutdown=10)
    )
    with listener:  # closed by uvicorn's shutdown, or here if the test failed first
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [listener])
            try:
                yield f"http://{host}:{port}"
            finally:
                server.should_exit = True  # closes the listener and idle connections, then stops
