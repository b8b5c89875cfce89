"""The middleware pipeline: a chain built once, run once per request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias

import anyio
from anyio.abc import TaskGroup

from chatstate._background import Background
from chatstate._checks import check_session_id
from chatstate.errors import ConfigurationError, InvalidMessageError, PipelineError
from chatstate.messages import Message, make_message
from chatstate.providers.base import StreamChunk
from chatstate.streaming import StreamedTurn
from chatstate.window import TokenBudget

__all__ = [
    "CallNext",
    "ChunkFilter",
    "ChunkSink",
    "ExecutionResult",
    "Middleware",
    "Pipeline",
    "RequestContext",
]

ChunkFilter: TypeAlias = Callable[[StreamChunk], StreamChunk | None]
"""Sees each chunk of a streamed turn on its way to the consumer: returns it, another chunk in its
place, or None to hold it back (see :attr:`RequestContext.chunk_filters`)."""


class ChunkSink(Protocol):
    """The consumer of a streamed turn, as the provider middleware sees it
    (:attr:`RequestContext.stream`; a :class:`~chatstate.streaming.StreamedTurn`)."""

    def put(self, chunk: StreamChunk) -> None:
        """Queue ``chunk`` for the consumer (a tool result, a reply that came whole)."""
        ...

    async def relay(
        self,
        chunks: AsyncIterator[StreamChunk],
        take: Callable[[StreamChunk], StreamChunk | None],
    ) -> None:
        """Have the consumer read the provider's ``chunks`` itself, in its own iteration, each
        through ``take`` (which sees every chunk and returns what the consumer gets, or None),
        up to the chunk with the whole message or the end; raise what reading them raised."""
        ...


@dataclass(slots=True, eq=False)
class RequestContext:
    """What one request carries through the chain; middlewares read and fill it in.

    The built-in middlewares fill ``history`` (state), ``messages`` and ``response`` (provider), and
    add every message of the turn that should be stored to ``new_messages``.
    """

    session_id: str
    """The session the request belongs to (already checked)."""
    message: Message
    """The new message of this turn (the last of them, when a turn brings several)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options for the provider (``execute_with_session(..., temperature=0)``)."""
    history: list[Message] = field(default_factory=list)
    """The session's stored history, oldest first, as loaded before the provider runs."""
    messages: list[Message] = field(default_factory=list)
    """The messages sent to the provider."""
    response: Message | None = None
    """The provider's reply."""
    new_messages: list[Message] = field(default_factory=list)
    """The messages of this turn, in order, that the state middleware stores after the reply."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage: ``load``, ``provider``, ``save``, ``total``."""
    state: dict[str, Any] = field(default_factory=dict)
    """Free space for middlewares to pass things to each other."""
    history_loader: Callable[[], Awaitable[list[Message]]] | None = None
    """Set by a middleware that defers loading: :meth:`get_history` calls it once."""
    pinned: list[Message] = field(default_factory=list)
    """Messages sent after the system prompt and before the history, whatever bounds the window
    (a middleware may add some for this request; the provider middleware's own come first)."""
    summary: Message | None = None
    """The session's summary of what fell out of its history (a system message), if any: sent
    after the pinned messages and before the history."""
    window: list[Message] | None = None
    """The part of the history the provider was sent (set by the provider middleware)."""
    budget: TokenBudget | None = None
    """The token budget of the request (``StateMiddlewareConfig(max_tokens=...)``), if any."""
    task_group: TaskGroup | None = None
    """The task group of the pipeline's ``async with`` block, for work that goes on after the
    turn (the state middleware's summaries): the block's end waits for it, or cancels it. None
    when the pipeline runs outside ``async with``."""
    incoming: tuple[Message, ...] = ()
    """Every message the turn brings, in order: ``(message,)``, or several (the results of
    parallel tool calls, ``execute(session_id, [result1, result2])``)."""
    window_start: int | None = None
    """Where ``window`` starts in ``history``: the messages before it were left out by the
    bounds (orphans dropped after it do not count); set by the provider middleware."""
    stream: ChunkSink | None = None
    """The consumer of a streamed turn (``Pipeline.stream``), to which the provider middleware
    sends the chunks through ``chunk_filters``; None when the turn is not streamed."""
    chunk_filters: list[ChunkFilter] = field(default_factory=list)
    """Filters a middleware adds (before ``call_next``) to observe or transform the chunks of a
    streamed turn: the filter added last (by the middleware nearest the provider) sees a chunk
    first, as a reply passes back out through the chain. They are not run on turns that are not
    streamed, and change only what the consumer gets: the stored reply is ``response``. Plain
    functions, as they may run in the consumer's task (the model's chunks) or the turn's (the
    rest)."""
    model_scope: anyio.CancelScope | None = None
    """The cancel scope of the model's work in a streamed turn (set by the provider middleware):
    a streamed turn left early cancels it, and the provider middleware ends the turn as
    ``interrupted``."""
    interrupted: bool = False
    """Set when the turn was cut off (its stream left early, or its task cancelled) after the
    model was asked: ``response`` is then the reply as far as it was read (metadata
    ``{"interrupted": true}``), and ``new_messages`` the turn so far, without half a tool
    exchange. The state middleware's ``on_interrupt`` decides whether they are stored."""
    regenerate: bool = False
    """Set for a turn run again (:meth:`Pipeline.regenerate`): the state middleware takes its
    message from the session (its newest user message) and replaces the old reply when it
    stores the new one."""
    metadata: dict[str, Any] | None = None
    """The session's metadata, to be stored in the turn's own append (replacing what the
    session had; None: left as it is): set by a middleware, as a title on a conversation's first
    turn (:meth:`~chatstate.stores.BackendStore.set_metadata`)."""

    async def get_history(self) -> list[Message]:
        """The session's history, loading it first if a middleware deferred the load."""
        loader = self.history_loader
        if loader is not None:
            self.history_loader = None
            self.history = await loader()
        return self.history


CallNext: TypeAlias = Callable[[RequestContext], Awaitable[None]]
"""Runs the rest of the chain for a request."""


class Middleware(Protocol):
    """One link of the chain: do something, ``await call_next(context)`` (or answer without it),
    then do something after."""

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None: ...


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The outcome of one turn."""

    session_id: str
    response: Message
    """The assistant's reply."""
    messages: list[Message]
    """The messages the provider was given (system prompt, history, the new message)."""
    new_messages: list[Message]
    """The messages the turn added to the session (the new message and the reply)."""
    timings: dict[str, float]
    """Seconds spent per stage: ``load``, ``provider``, ``save``, ``total``."""
    interrupted: bool = False
    """The turn was cut off (a streamed turn left early or cancelled): ``response`` is the reply
    as far as it was written, marked ``{"interrupted": true}`` in its metadata, and
    ``new_messages`` the turn so far (stored or not, by ``StateMiddlewareConfig.on_interrupt``)."""

    @classmethod
    def of(cls, context: RequestContext) -> ExecutionResult:
        """The result of the turn of ``context`` (which has a response)."""
        assert context.response is not None
        return cls(
            session_id=context.session_id,
            response=context.response,
            messages=context.messages,
            new_messages=context.new_messages,
            timings=context.timings,
            interrupted=context.interrupted,
        )


class _Link:
    """Binds a middleware to the rest of the chain; calling it starts the middleware directly,
    without a wrapper coroutine of its own."""

    __slots__ = ("middleware", "next")

    def __init__(self, middleware: Middleware, next: CallNext) -> None:
        self.middleware = middleware
        self.next = next

    def __call__(self, context: RequestContext) -> Awaitable[None]:
        return self.middleware(context, self.next)


async def _end_of_chain(context: RequestContext) -> None:
    if context.response is None:
        raise PipelineError(
            "the middleware chain ended without a reply: put a ProviderMiddleware last"
        )


class Pipeline:
    """An async middleware chain, built once and run per request.

    ``Pipeline(StateMiddleware(store, config), ProviderMiddleware(provider))``: the first middleware
    runs first and wraps all the others. A pipeline is safe to share between any number of
    concurrent requests.

    ``async with Pipeline(...) as pipe:`` owns the work that goes on after a turn has returned
    (summaries) in a task group: when the block ends, it waits for that work (each summary is
    bounded by its ``timeout``); when the block raises or is cancelled, it cancels it. Nothing
    started by a turn outlives the block. Outside ``async with``, a pipeline runs turns that need
    no background work; a :class:`~chatstate.StateMiddleware` with summaries raises
    :class:`~chatstate.errors.PipelineError` at the first turn instead of losing or delaying
    them. Enter and leave the block in one task; a pipeline may be entered again after its block.
    """

    __slots__ = ("_background", "_handler", "middlewares")

    def __init__(self, *middlewares: Middleware) -> None:
        if not middlewares:
            raise ConfigurationError("a Pipeline needs at least one middleware")
        for index, middleware in enumerate(middlewares):
            if not callable(middleware):
                raise ConfigurationError(
                    f"middleware {index} ({type(middleware).__name__}) is not callable"
                )
        self.middlewares: tuple[Middleware, ...] = middlewares
        handler: CallNext = _end_of_chain
        for middleware in reversed(middlewares):
            handler = _Link(middleware, handler)
        self._handler = handler
        self._background = Background("this Pipeline")

    async def __aenter__(self) -> Self:
        await self._background.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._background.exit(exc, cancel=False)

    def __repr__(self) -> str:
        names = ", ".join(type(middleware).__name__ for middleware in self.middlewares)
        return f"Pipeline({names})"

    async def execute_with_session(
        self, session_id: str, role: str, content: Any, **options: Any
    ) -> ExecutionResult:
        """Run one turn: ``content`` from ``role`` in session ``session_id``.

        ``options`` go to the provider. Raises :class:`~chatstate.errors.InvalidInputError` for a
        bad session id, role or content, before anything is loaded or stored.
        """
        return await self.execute(session_id, make_message(role, content), **options)

    async def execute(
        self, session_id: str, message: Message | Sequence[Message], **options: Any
    ) -> ExecutionResult:
        """Run one turn with a ready-made :class:`Message` (for example a tool result), or with
        several, stored in order in the turn's one append (the results of parallel tool calls
        that ran in the client: ``execute(session_id, [result1, result2])``)."""
        return await self._run(self._context(session_id, message, options))

    async def regenerate(self, session_id: str, **options: Any) -> ExecutionResult:
        """Answer the session's newest user message again: the model is given the history
        before it and that message, and its new reply replaces the old one (everything stored
        after that message: the reply, and any tool exchange), which stays if the model fails.
        The turn holds the session's lock or lease like any other (no turn of the pipeline comes
        between its load and its save), and the old reply is removed conditional on the version
        it read. Needs a :class:`~chatstate.StateMiddleware` over a store with history operations
        (:class:`~chatstate.stores.SessionHistory`); a session without a user message raises
        :class:`~chatstate.errors.InvalidInputError`."""
        return await self._run(self._again(session_id, options))

    def stream_regenerate(self, session_id: str, **options: Any) -> StreamedTurn:
        """:meth:`regenerate`, its new reply streamed as :meth:`stream` streams a turn's: the
        old reply is replaced when the stream has ended. A stream cut off before its end leaves
        the old reply, unless the state middleware's ``on_interrupt="keep_partial"`` stores the
        new one as far as it went in its place."""
        context = self._again(session_id, options)
        return StreamedTurn(context, self._run, ExecutionResult.of, self._background.group)

    def _again(self, session_id: str, options: dict[str, Any]) -> RequestContext:
        """The context of a turn run again: its message comes from the session."""
        return RequestContext(
            session_id=check_session_id(session_id),
            message=_NOT_LOADED,
            options=options,
            task_group=self._background.group,
            regenerate=True,
        )

    def stream_with_session(
        self, session_id: str, role: str, content: Any, **options: Any
    ) -> StreamedTurn:
        """A streamed turn of ``content`` from ``role`` (see :meth:`stream`)."""
        return self.stream(session_id, make_message(role, content), **options)

    def stream(
        self, session_id: str, message: Message | Sequence[Message], **options: Any
    ) -> StreamedTurn:
        """A turn whose reply is streamed: ``async with pipe.stream(...) as turn:`` runs it,
        ``async for chunk in turn:`` gives its :class:`~chatstate.StreamChunk` s as the model
        writes them, and ``turn.result`` is its :class:`ExecutionResult` once the stream ended.

        Input is checked here, before anything runs. The turn runs in a task of the pipeline's
        ``async with`` block (or of the turn's own block, outside it) and holds the session's lock
        or lease until the model has finished; the whole turn is stored in one append at the
        end. Leaving the block before the stream ended interrupts the turn (see
        :class:`~chatstate.streaming.StreamedTurn`).
        """
        context = self._context(session_id, message, options)
        return StreamedTurn(context, self._run, ExecutionResult.of, self._background.group)

    def _context(
        self, session_id: str, message: Message | Sequence[Message], options: dict[str, Any]
    ) -> RequestContext:
        session_id = check_session_id(session_id)
        if type(message) is Message:
            incoming: tuple[Message, ...] = (message,)
        else:
            incoming = _several(message)
        return RequestContext(
            session_id=session_id,
            message=incoming[-1],
            incoming=incoming,
            options=options,
            new_messages=list(incoming),
            task_group=self._background.group,
        )

    async def _run(self, context: RequestContext) -> ExecutionResult:
        started = time.perf_counter()
        await self._handler(context)
        if context.response is None:
            raise PipelineError(
                f"no middleware produced a reply for session {context.session_id!r}"
            )
        context.timings["total"] = time.perf_counter() - started
        return ExecutionResult.of(context)


_NOT_LOADED = Message(role="user", content="")
"""The message of a regenerated turn until the state middleware has read it from the session."""


def _several(messages: object) -> tuple[Message, ...]:
    if isinstance(messages, Message):
        return (messages,)
    if not isinstance(messages, list | tuple) or not messages:
        raise InvalidMessageError(
            f"expected a chatstate.Message or a non-empty list of them, got "
            f"{type(messages).__name__}"
        )
    for index, item in enumerate(messages):
        if not isinstance(item, Message):
            raise InvalidMessageError(
                f"messages[{index}] is a {type(item).__name__}, not a chatstate.Message"
            )
    return tuple(messages)
