"""Streamed turns: :class:`StreamedTurn`, what ``Pipeline.stream(...)`` returns.

The middleware chain runs in a task of its own (in the pipeline's ``async with`` block), so that it
holds the session's lock or lease, loads, calls the model, runs tools and stores the turn as in
any turn. The model's stream itself is read by the consumer: when the provider middleware has a
provider's stream to read, it hands it over (:meth:`StreamedTurn.relay`) and waits, and the
consumer's own ``async for`` pulls each chunk straight from the provider, in its own task. So a
chunk costs no task switch, a slow consumer slows the model's stream down (as reading the
provider directly would; nothing piles up), and a reply cut off is exactly what the consumer
took. The rest (a reply that came whole, tool results) is queued by the turn's task.

Leaving the ``async with`` block before the stream ended (a ``break``, an exception, the consumer's
task cancelled: a web client gone) interrupts the turn, by what it was doing:

- waiting for the session's lock or lease, or loading: its task is cancelled; nothing is stored;
- in the model's hands (the provider streaming, tools running): the provider's stream is closed
  and the model's work cancelled (the provider middleware's ``context.model_scope``), and the
  state middleware stores what its ``on_interrupt`` says: nothing, or the turn so far, its reply
  as far as the consumer took it, marked ``{"interrupted": true}``, never half a tool exchange;
- the model done, the turn being stored: nothing is cut; the turn is stored whole.

The block's exit waits for that (shielded from the consumer's own cancellation, so a partial turn
is stored even then): after the block the store holds whatever the turn stores.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
from anyio.abc import TaskGroup

from chatstate._background import Background
from chatstate.errors import PipelineError
from chatstate.providers.base import StreamChunk

if TYPE_CHECKING:
    from chatstate.pipeline import ExecutionResult, RequestContext

__all__ = ["StreamedTurn"]


class _Relay:
    """A provider's stream handed to the consumer to read."""

    __slots__ = ("chunks", "done", "error", "take")

    def __init__(
        self,
        chunks: AsyncIterator[StreamChunk],
        take: Callable[[StreamChunk], StreamChunk | None],
    ) -> None:
        self.chunks = chunks
        self.take = take
        self.done = anyio.Event()
        self.error: Exception | None = None

    async def close(self) -> None:
        close = getattr(self.chunks, "aclose", None)
        if close is not None:  # now, not when the collector finds it: it may hold a socket
            with anyio.CancelScope(shield=True):
                await close()


class StreamedTurn:
    """One streamed turn: ``async with pipe.stream(session_id, message) as turn:``, then
    ``async for chunk in turn:`` (:class:`~chatstate.StreamChunk` s: text as the model writes it;
    a chunk with ``message`` ends each message of the turn: the reply, and in a tool turn each
    call and result before it), then ``turn.result`` (an :class:`~chatstate.ExecutionResult`).

    An error of the turn (the provider failing mid-stream, a store error) is raised by the
    ``async for`` after the chunks that came before it, and nothing of the turn is stored. Leaving
    the block before the stream's end interrupts the turn (see :mod:`chatstate.streaming`): then
    ``turn.result.interrupted`` is true, or ``turn.result`` raises
    :class:`~chatstate.errors.PipelineError` if the model had not been asked yet. A turn is
    entered once; its block may exit in another task than the one that entered it (an async
    generator closed late), except outside the pipeline's ``async with``.
    """

    __slots__ = (
        "_chunks",
        "_context",
        "_done",
        "_error",
        "_finished",
        "_group",
        "_make_result",
        "_own",
        "_relay",
        "_result",
        "_run",
        "_scope",
        "_waiter",
    )

    def __init__(
        self,
        context: RequestContext,
        run: Callable[[RequestContext], Awaitable[ExecutionResult]],
        make_result: Callable[[RequestContext], ExecutionResult],
        group: TaskGroup | None,
    ) -> None:
        self._context = context
        self._run = run
        self._make_result = make_result
        self._group = group
        self._own: Background | None = None
        self._chunks: deque[StreamChunk] = deque()
        self._waiter: anyio.Event | None = None
        self._finished = False  # the chain has ended: no chunk will come
        self._done: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._result: ExecutionResult | None = None
        self._error: Exception | None = None
        self._relay: _Relay | None = None
        context.stream = self

    def __repr__(self) -> str:
        state = "ended" if self._finished else "running" if self._done else "not started"
        return f"StreamedTurn(session_id={self._context.session_id!r}, {state})"

    @property
    def result(self) -> ExecutionResult:
        """The turn's outcome, once its stream has ended (whole, or interrupted)."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            return self._result
        if not self._finished:
            raise PipelineError("the streamed turn has not ended: read turn.result after it")
        if self._context.response is None:
            raise PipelineError("the streamed turn was interrupted before the model answered")
        return self._make_result(self._context)

    async def __aenter__(self) -> Self:
        if self._done is not None:
            raise PipelineError("a streamed turn runs once: call pipe.stream(...) again")
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()
        group = self._group
        if group is None:  # outside the pipeline's block: the turn's block owns its task
            self._own = Background("a streamed turn")
            group = await self._own.enter()
        group.start_soon(self._produce, name=f"chatstate-stream-{self._context.session_id[:40]}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        done, scope = self._done, self._scope
        assert done is not None and scope is not None, "exited without being entered"
        if not done.is_set():
            relay, self._relay = self._relay, None
            if relay is not None:
                await relay.close()
            model = self._context.model_scope
            (scope if model is None else model).cancel()
            with anyio.CancelScope(shield=True):
                await done.wait()
        if self._own is not None:
            return await self._own.exit(exc, cancel=False)
        return False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamChunk:
        chunks = self._chunks
        if chunks:
            return chunks.popleft()
        if self._done is None:
            raise PipelineError("enter the turn first: async with pipe.stream(...) as turn")
        while True:
            relay = self._relay
            if relay is not None:
                chunk = await self._read(relay)
                if chunk is not None:
                    return chunk
            elif chunks:
                return chunks.popleft()
            elif self._finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            else:
                waiter = self._waiter = anyio.Event()
                await waiter.wait()

    async def _read(self, relay: _Relay) -> StreamChunk | None:
        """The next chunk of the provider's stream, through its ``take``; None when it held the
        chunk back, or the stream ended (the turn's task takes it from there)."""
        try:
            chunk = await relay.chunks.__anext__()
        except StopAsyncIteration:
            self._end_relay(relay)
            return None
        except Exception as exc:
            relay.error = exc
            self._end_relay(relay)
            await relay.close()
            return None
        taken = relay.take(chunk)
        if chunk.message is not None:  # the whole reply: nothing after it counts
            self._end_relay(relay)
            await relay.close()
        return taken

    def _end_relay(self, relay: _Relay) -> None:
        if self._relay is relay:
            self._relay = None
        relay.done.set()

    def put(self, chunk: StreamChunk) -> None:
        """Queue ``chunk`` for the consumer."""
        self._chunks.append(chunk)
        self._wake()

    async def relay(
        self,
        chunks: AsyncIterator[StreamChunk],
        take: Callable[[StreamChunk], StreamChunk | None],
    ) -> None:
        """Have the consumer read ``chunks`` (see :class:`~chatstate.pipeline.ChunkSink`)."""
        relay = self._relay = _Relay(chunks, take)
        self._wake()
        try:
            await relay.done.wait()
        finally:
            if self._relay is relay:  # cancelled: the consumer stops reading it
                self._relay = None
        if relay.error is not None:
            raise relay.error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    async def _produce(self) -> None:
        assert self._scope is not None and self._done is not None
        try:
            with self._scope:
                self._result = await self._run(self._context)
        except Exception as exc:  # the consumer gets it, not the pipeline's task group
            self._error = exc
        finally:
            self._finished = True
            self._wake()
            self._done.set()
