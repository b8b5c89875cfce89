"""StateMiddleware: loads a session's history before the turn and stores the turn after it."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import anyio

from chatstate._checks import check_count, check_max_messages, check_ttl
from chatstate._locks import KeyedLock
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.errors import (
    ChatStateError,
    ConfigurationError,
    LeaseLostError,
    PipelineError,
    StateLoadError,
    StateSaveError,
)
from chatstate.messages import Message
from chatstate.middleware._regenerate import drop_old_reply, load_last_turn
from chatstate.pipeline import CallNext, RequestContext
from chatstate.sessions import ConversationIndex, index_session
from chatstate.stores.base import SessionLeases, SessionMetadata, StateStore
from chatstate.summaries import Summaries, SummaryConfig
from chatstate.tokens import ESTIMATE, Tally, TokenCounter
from chatstate.window import TokenBudget

__all__ = ["StateMiddleware", "StateMiddlewareConfig"]

logger = logging.getLogger("chatstate.state")

LoadErrorPolicy = Literal["continue", "raise"]
InterruptPolicy = Literal["discard", "keep_partial"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateMiddlewareConfig:
    """How :class:`StateMiddleware` keeps history: what it loads, stores, bounds and
    serialises. A turn's ``context.metadata``, if a middleware set it, is stored as the session's
    metadata in the turn's own append."""

    max_messages: int = 20
    """The newest messages kept per session and sent to the provider; ``-1`` keeps everything
    (every turn gets slower as history grows)."""
    ttl: timedelta | None = None
    """How long a session lives after its last turn; ``None``: for ever."""
    on_load_error: LoadErrorPolicy = "continue"
    """A failed load: ``"continue"`` runs the turn with empty history (logged, counted in
    ``StateMiddleware.load_errors``); ``"raise"`` raises
    :class:`~chatstate.errors.StateLoadError`."""
    lock: bool = True
    """Serialise concurrent turns of one session in this process."""
    lease_ttl: timedelta | None = None
    """Also serialise them across every instance sharing the store, with the store's lease,
    which frees itself this long after its holder died; ``None``: no lease."""
    lease_timeout: timedelta = timedelta(seconds=30)
    """How long a turn waits for the lease before :class:`~chatstate.errors.LeaseTimeoutError`."""
    lazy: bool = False
    """Load the history only when a later middleware or the provider asks for it
    (``await context.get_history()``); a turn that never asks makes no load, and is stored."""
    max_tokens: int | None = None
    """A token budget per request: the provider gets the longest valid window of the history that
    fits beside the system prompt, pinned messages, summary, new message and ``reply_tokens``.
    ``max_messages`` still bounds what is stored and loaded: set it high enough to fill it."""
    reply_tokens: int | None = None
    """The budget's reserve for the reply; ``None``: a quarter of ``max_tokens``, at most 4,096."""
    token_counter: TokenCounter = ESTIMATE
    """How tokens are counted (default: an offline estimate). Each message is counted once, when
    its turn is stored, and the count is stored with it."""
    summary: SummaryConfig | None = None
    """Fold what leaves the window into the session's summary, in the background of
    ``async with Pipeline(...)`` (which a pipeline with summaries needs); while a fold runs late,
    a session may hold up to twice ``max_messages``. ``None``: no summaries."""
    on_interrupt: InterruptPolicy = "discard"
    """What is stored of a turn cut off after the model was asked (a stream left early, a task
    cancelled): ``"discard"``, nothing; ``"keep_partial"``, the turn so far in one append (whole
    tool exchanges only), the reply as far as it was read marked ``{"interrupted": true}``. A turn
    whose lease ran out stores nothing."""
    index_conversations: bool = True
    """Register a session whose id follows the conversation pattern (``user-{id}-conv-{cid}``)
    under its user after each turn (:class:`~chatstate.sessions.Conversations`), for ``ttl``
    (for ever on a store with a sliding expiry, whose loads keep a session alive); a failure is
    logged and counted in ``StateMiddleware.index_errors``, and the turn stands."""

    def __post_init__(self) -> None:
        check_max_messages(self.max_messages)
        if self.max_tokens is not None:
            check_count(self.max_tokens, name="max_tokens")
            if self.reply_tokens is not None:
                check_count(self.reply_tokens, name="reply_tokens", minimum=0)
                if self.reply_tokens >= self.max_tokens:
                    raise ConfigurationError(
                        f"reply_tokens ({self.reply_tokens}) must be less than max_tokens "
                        f"({self.max_tokens}), or nothing is left for the request"
                    )
        elif self.reply_tokens is not None:
            raise ConfigurationError("reply_tokens needs max_tokens")
        Tally(self.token_counter)  # a counter without count() or name fails here
        if self.summary is not None:
            if not isinstance(self.summary, SummaryConfig):
                raise ConfigurationError(
                    f"summary must be a SummaryConfig, got {type(self.summary).__name__}"
                )
            self.summary.bounds(check_max_messages(self.max_messages))
        if self.ttl is not None and not isinstance(self.ttl, timedelta):
            raise ConfigurationError(
                f"ttl must be a timedelta or None, got {type(self.ttl).__name__}"
            )
        check_ttl(self.ttl)
        if self.on_interrupt not in ("discard", "keep_partial"):
            raise ConfigurationError(
                f"on_interrupt must be 'discard' or 'keep_partial', got {self.on_interrupt!r}"
            )
        if self.on_load_error not in ("continue", "raise"):
            raise ConfigurationError(
                f"on_load_error must be 'continue' or 'raise', got {self.on_load_error!r}"
            )
        for flag in ("lock", "lazy", "index_conversations"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(
                    f"{flag} must be a bool, got {type(getattr(self, flag)).__name__}"
                )
        for name in ("lease_ttl", "lease_timeout"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, timedelta):
                raise ConfigurationError(f"{name} must be a timedelta, got {type(value).__name__}")
            check_ttl(value, name=name)

    def budget(self) -> TokenBudget | None:
        """The token budget of this config (None without ``max_tokens``)."""
        if self.max_tokens is None:
            return None
        reply = self.reply_tokens
        if reply is None:
            reply = min(self.max_tokens // 4, 4096)
        return TokenBudget(self.max_tokens, reply, Tally(self.token_counter))


class StateMiddleware:
    """Gives each turn its session's history, and stores the turn.

    Before the rest of the chain it loads the newest ``max_messages`` of the session into
    ``context.history``; after it, it appends the turn's new messages (the user's message and the
    reply) in ONE atomic ``append``, trimmed to ``max_messages``, with the expiry refreshed. With
    ``lock`` on, turns of one session run one at a time; other sessions never wait.

    ``clock`` measures the summaries' ``timeout`` and ``retry_after`` (a
    :class:`~chatstate.testing.FakeClock` in tests).
    """

    __slots__ = (
        "_budget",
        "_index",
        "_keep_partial",
        "_lazy",
        "_lease",
        "_limit",
        "_locks",
        "_raise_on_load_error",
        "_stored_limit",
        "_summaries",
        "_ttl",
        "config",
        "index_errors",
        "load_errors",
        "store",
    )

    def __init__(
        self,
        store: StateStore,
        config: StateMiddlewareConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        for method in ("load", "append"):
            if not callable(getattr(store, method, None)):
                raise ConfigurationError(
                    f"store must implement the StateStore protocol; "
                    f"{type(store).__name__} has no {method}()"
                )
        self.store = store
        self.config = config = config if config is not None else StateMiddlewareConfig()
        self._limit = check_max_messages(config.max_messages)
        self._ttl = config.ttl
        self._raise_on_load_error = config.on_load_error == "raise"
        self._keep_partial = config.on_interrupt == "keep_partial"
        self._lazy = config.lazy
        self._budget = config.budget()
        self._summaries = (
            None if config.summary is None else Summaries(store, config.summary, self._limit, clock)
        )
        # With summaries, folds bound the history; the trim only catches what they miss (a
        # fold running late must find the messages it is to summarise still there).
        self._stored_limit = self._limit
        if self._summaries is not None and self._limit is not None:
            self._stored_limit = 2 * self._limit
        self._locks = KeyedLock() if config.lock else None
        self._lease: tuple[float, float] | None = None
        if config.lease_ttl is not None:
            if not isinstance(store, SessionLeases):
                raise ConfigurationError(
                    f"lease_ttl needs a store with leases; {type(store).__name__} has no lease()"
                )
            self._lease = (config.lease_ttl.total_seconds(), config.lease_timeout.total_seconds())
        self._index = config.index_conversations and isinstance(store, ConversationIndex)
        self.load_errors = 0
        """Loads that failed (and, with ``on_load_error="continue"``, were replaced by [])."""
        self.index_errors = 0
        """Registrations of a turn's conversation that failed (see ``index_conversations``)."""

    def __repr__(self) -> str:
        return f"StateMiddleware({self.store!r}, {self.config!r})"

    @property
    def summaries(self) -> Summaries | None:
        """The summaries' scores (``made``, ``failed``, ``skipped``, ``pending``), if on."""
        return self._summaries

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        if context.task_group is None and self._summaries is not None:
            raise PipelineError(
                "summaries are written in the background, in the task group of the pipeline: "
                "run the turns inside `async with Pipeline(...) as pipe:`"
            )
        locks = self._locks
        if locks is None:
            await self._run(context, call_next)
            return
        session_id = context.session_id
        await locks.acquire(session_id)
        try:
            await self._run(context, call_next)
        finally:
            locks.release(session_id)

    async def _run(self, context: RequestContext, call_next: CallNext) -> None:
        if self._lease is None:
            await self._turn(context, call_next)
            return
        ttl, timeout = self._lease
        async with self.store.lease(context.session_id, ttl=ttl, timeout=timeout):  # type: ignore[attr-defined]
            await self._turn(context, call_next)

    async def _load(self, context: RequestContext) -> list[Message]:
        """The session's history, or what the load-error policy makes of a failed load."""
        session_id = context.session_id
        started = time.perf_counter()
        try:
            if self._summaries is None:
                history = await self.store.load(session_id, limit=self._limit)
            else:
                history, summary = await self.store.load_with_summary(  # type: ignore[attr-defined]
                    session_id, limit=self._limit
                )
                context.summary = self._summaries.framed(summary)
        except Exception as exc:
            self.load_errors += 1
            if self._raise_on_load_error:
                if isinstance(exc, ChatStateError):
                    raise
                raise StateLoadError(
                    f"loading session {session_id!r} failed: {type(exc).__name__}: {exc}",
                    session_id=session_id,
                ) from exc
            logger.warning(
                "loading session %r failed (%s: %s); continuing with empty history",
                session_id,
                type(exc).__name__,
                exc,
            )
            history = []
        context.timings["load"] = time.perf_counter() - started
        return history

    async def _turn(self, context: RequestContext, call_next: CallNext) -> None:
        session_id = context.session_id
        budget = context.budget = self._budget
        if context.regenerate:
            await load_last_turn(self.store, context, self._limit)
        elif self._lazy:
            context.history_loader = functools.partial(self._load, context)
        else:
            context.history = await self._load(context)

        try:
            await call_next(context)
        except anyio.get_cancelled_exc_class():
            # The turn's task was cancelled where it stood (its caller gone): store what it said,
            # shielded (the store's own timeouts bound the wait). Under a lease that ran out (which
            # cancels its turn too) the store's fence refuses the write: nothing is stored.
            if context.interrupted and self._keep_partial:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._save(context, budget)
                    except ChatStateError as exc:  # the cancellation goes on, not this
                        logger.warning(
                            "the interrupted turn of session %r was not stored: %s",
                            context.session_id,
                            exc,
                        )
            raise
        if context.response is None:
            return  # nothing answered: the pipeline reports it, and half a turn is not stored
        if context.interrupted and not self._keep_partial:
            return
        length = await self._save(context, budget)
        summaries, task_group = self._summaries, context.task_group
        if summaries is not None and task_group is not None:  # checked by __call__
            loaded, start = len(context.history), context.window_start
            summaries.after_turn(
                session_id,
                length,
                loaded=loaded,
                window=None if start is None else loaded - start,
                task_group=task_group,
            )

    async def _save(self, context: RequestContext, budget: TokenBudget | None) -> int:
        """Append the turn's messages in one call; the session's length after it."""
        session_id = context.session_id
        saving = time.perf_counter()
        new_messages = context.new_messages
        if budget is not None:
            budget.tally.total(new_messages)  # counted once, now: the store keeps the counts
        try:
            if context.regenerate:
                await drop_old_reply(self.store, context)
            metadata = context.metadata
            if metadata is None:
                length = await self.store.append(
                    session_id, new_messages, max_messages=self._stored_limit, ttl=self._ttl
                )
            elif isinstance(self.store, SessionMetadata):
                store: Any = self.store
                length = await store.append(
                    session_id, new_messages, max_messages=self._stored_limit, ttl=self._ttl,
                    metadata=metadata,
                )  # fmt: skip
            else:
                raise ConfigurationError(
                    f"the turn set context.metadata, and {type(self.store).__name__} keeps no "
                    "session metadata"
                )
        except (StateSaveError, LeaseLostError, ConfigurationError):
            raise  # the store's own: it carries the write id (or, fenced, says why)
        except Exception as exc:
            raise StateSaveError(
                f"storing the turn of session {session_id!r} failed: {type(exc).__name__}: {exc}",
                session_id=session_id,
                messages=new_messages,
            ) from exc
        if self._index:
            await self._register(session_id)
        context.timings["save"] = time.perf_counter() - saving
        return length

    async def _register(self, session_id: str) -> None:
        """Index the turn's conversation under its user (never failing the stored turn)."""
        ttl = None if self._ttl is None else self._ttl.total_seconds()
        if getattr(self.store, "sliding_ttl", None) is not None:
            ttl = None  # its loads keep the session alive past its last turn's ttl
        try:
            await index_session(self.store, session_id, ttl=ttl)
        except ChatStateError as exc:
            self.index_errors += 1
            logger.warning("session %r was not indexed under its user: %s", session_id, exc)
