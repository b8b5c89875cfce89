"""Streamed turns: :class:`StreamedTurn`, what ``Pipeline.stream(...)`` returns.

The middleware chain runs in a task of its own (in the pipeline's ``async with`` block), so that it
holds the session's lock or lease, loads, calls the model and stores the turn as in any turn, while
the consumer takes the chunks in its own task. The provider middleware hands each chunk over
without waiting for the consumer (the chunks queue, unbounded: a reply is kept whole for the
store anyway), so a chunk costs the chain no task switch; the consumer waits only when it has
taken every chunk written so far.

Leaving the ``async with`` block before the stream ended (a ``break``, an exception, the consumer's
task cancelled: a web client gone) interrupts the turn, by what it was doing:

- waiting for the session's lock or lease, or loading: its task is cancelled; nothing is stored;
- in the model's hands (the provider streaming, tools running): the model's work is cancelled
  (the provider middleware's ``context.model_scope``), and the state middleware stores what its
  ``on_interrupt`` says: nothing, or the turn so far, its reply as far as the model had written it
  and marked ``{"interrupted": true}``, never half a tool exchange;
- the model done, the turn being stored: nothing is cut; the turn is stored whole.

The block's exit waits for that (shielded from the consumer's own cancellation, so a partial turn
is stored even then): after the block the store holds whatever the turn stores.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
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
        "_result",
        "_run",
        "_scope",
        "_waiter",
    )

    def __init__(
        self,
        context: RequestContext,
        run: Callable[[RequestContext], Awaitable[ExecutionResult]],
        make_result: Callable[..., ExecutionResult],
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
        context.stream = self._put

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
        while not chunks:
            if self._finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            waiter = self._waiter = anyio.Event()
            await waiter.wait()
        return chunks.popleft()

    def _put(self, chunk: StreamChunk) -> None:
        self._chunks.append(chunk)
        self._wake()

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
