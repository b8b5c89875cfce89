"""A streaming model that writes each chunk when the test says so: what a test needs to see a
reply arrive piece by piece, or to cut a turn off at a point it chooses, without waiting on time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import anyio

from chatstate import Message, StreamChunk

__all__ = ["GatedModel"]


class GatedModel:
    """``await model.write("Hello ")`` makes the model write that chunk, and returns once the
    pipeline has taken it (it has asked for the next one); ``await model.finish()`` ends the
    reply, whose message is the chunks joined. One streamed turn at a time; a turn that is not
    streamed gets ``"OK"``. ``asked`` is set once a streamed turn has reached the model.
    ``with GatedModel() as model:`` closes its streams at the end."""

    def __init__(self) -> None:
        self._pieces_in, self._pieces = anyio.create_memory_object_stream[str | None]()
        self._taken_in, self._taken = anyio.create_memory_object_stream[None]()
        self.asked = anyio.Event()

    async def write(self, text: str) -> None:
        with anyio.fail_after(10):
            await self._pieces_in.send(text)
            await self._taken.receive()

    async def finish(self) -> None:
        with anyio.fail_after(10):
            await self._pieces_in.send(None)

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        return Message(role="assistant", content="OK")

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncIterator[StreamChunk]:
        self.asked.set()
        written: list[str] = []
        while (text := await self._pieces.receive()) is not None:
            written.append(text)
            yield StreamChunk(text)
            await self._taken_in.send(None)  # resumed when the pipeline asks for the next chunk
        yield StreamChunk("", Message(role="assistant", content="".join(written)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stream in (self._pieces_in, self._pieces, self._taken_in, self._taken):
            stream.close()
