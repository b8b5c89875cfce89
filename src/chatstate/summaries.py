"""Summaries: what fell out of a session's window, kept as a message that is sent before it.

``StateMiddlewareConfig(summary=SummaryConfig(ProviderSummarizer(provider)))`` turns them on. When
a turn leaves the session's history at ``summarize_at`` messages or more (or a token budget kept
some of it out of the window), the middleware folds the oldest messages, all but the newest
``keep_recent``, into the session's summary: in the background, after the turn has returned (in
the task group of ``async with Pipeline(...)``), so no turn ever waits for a model to summarise.
The store commits the fold only if the session still starts with the messages that were
summarised (see :class:`~chatstate.stores.base.SessionSummaries`), so a fold can never lose or
repeat what a turn wrote meanwhile, on this instance or another. A fold that fails or times out
is logged, counted and tried again at a later turn; the turn itself never sees it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from anyio.abc import TaskGroup

from chatstate._checks import check_count, check_ttl
from chatstate.clock import Clock
from chatstate.errors import ConfigurationError, ProviderError
from chatstate.messages import Message
from chatstate.providers.base import Provider, check_provider
from chatstate.stores.base import SessionSummaries

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "ProviderSummarizer",
    "Summarizer",
    "SummaryConfig",
    "transcript",
]

logger = logging.getLogger("chatstate.summaries")


@runtime_checkable
class Summarizer(Protocol):
    """Writes a session's new summary: the previous one (None at first) extended by ``messages``,
    the oldest messages of the history, about to leave it."""

    async def summarize(self, summary: str | None, messages: Sequence[Message]) -> str: ...


DEFAULT_INSTRUCTIONS = (
    "You keep the running summary of a conversation between a user and an assistant. Rewrite the "
    "summary so that it also covers the new messages. Keep every fact the user stated (names, "
    "numbers, preferences, decisions), what was asked and answered, and anything still open; "
    "leave out small talk. Answer with the summary alone, in plain prose."
)
"""What :class:`ProviderSummarizer` asks the model by default."""


def transcript(messages: Sequence[Message]) -> str:
    """``messages`` as plain text, a line per message (tool calls and results included)."""
    lines = []
    for message in messages:
        who = message.role if message.name is None else f"{message.role} ({message.name})"
        if message.content is not None:
            lines.append(f"{who}: {message.text}")
        for call in message.tool_calls:
            lines.append(f"{who} calls {call.name}({call.arguments})")
    return "\n".join(lines)


class ProviderSummarizer:
    """A :class:`Summarizer` that asks any :class:`~chatstate.Provider` (a small, cheap model
    will do): ``instructions`` as the system message, then the previous summary and the
    transcript of the messages to fold in. ``options`` go to ``provider.complete``."""

    __slots__ = ("instructions", "options", "provider")

    def __init__(
        self,
        provider: Provider,
        *,
        instructions: str = DEFAULT_INSTRUCTIONS,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        check_provider(provider)
        if not isinstance(instructions, str) or not instructions.strip():
            raise ConfigurationError("instructions must be a non-empty str")
        self.provider = provider
        self.instructions = instructions
        self.options = dict(options or {})

    def __repr__(self) -> str:
        return f"ProviderSummarizer({type(self.provider).__name__})"

    async def summarize(self, summary: str | None, messages: Sequence[Message]) -> str:
        request = (
            f"Summary so far:\n{summary if summary else '(none yet)'}\n\n"
            f"New messages:\n{transcript(messages)}"
        )
        reply = await self.provider.complete(
            [
                Message(role="system", content=self.instructions),
                Message(role="user", content=request),
            ],
            **self.options,
        )
        text = reply.text.strip() if isinstance(reply, Message) else ""
        if not text:
            raise ProviderError(f"{type(self.provider).__name__} returned no summary")
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryConfig:
    """When and how :class:`~chatstate.StateMiddleware` summarises a session.

    - ``summarizer``: writes the summaries (:class:`ProviderSummarizer` with any provider).
    - ``summarize_at``: a turn that leaves this many messages or more in the history schedules a
      summary (default: three quarters of ``max_messages``). Keep it under ``max_messages`` with
      room for a turn or two, or the store's trim may drop messages before they are summarised.
    - ``keep_recent``: the newest messages left out of a summary (default: half of
      ``max_messages``); moved so that a tool call and its results stay together.
    - ``timeout``: a summary that takes longer is abandoned and counted as failed.
    - ``retry_after``: after a failure, the session's next summary waits at least this long.
    - ``prefix``: put before the summary in the system message the provider gets.
    """

    summarizer: Summarizer
    summarize_at: int | None = None
    keep_recent: int | None = None
    timeout: timedelta = timedelta(seconds=60)
    retry_after: timedelta = timedelta(seconds=30)
    prefix: str = "Summary of the conversation before the messages that follow:\n"

    def __post_init__(self) -> None:
        if not callable(getattr(self.summarizer, "summarize", None)):
            raise ConfigurationError(
                "summarizer must have an async summarize(summary, messages) method; "
                f"{type(self.summarizer).__name__} has none"
            )
        if self.summarize_at is not None:
            check_count(self.summarize_at, name="summarize_at", minimum=2)
        if self.keep_recent is not None:
            check_count(self.keep_recent, name="keep_recent")
        for name in ("timeout", "retry_after"):
            value = getattr(self, name)
            if not isinstance(value, timedelta):
                raise ConfigurationError(f"{name} must be a timedelta, got {type(value).__name__}")
            check_ttl(value, name=name)
        if not isinstance(self.prefix, str):
            raise ConfigurationError(f"prefix must be a str, got {type(self.prefix).__name__}")

    def bounds(self, max_messages: int | None) -> tuple[int, int]:
        """``(summarize_at, keep_recent)``, defaults filled in from ``max_messages``."""
        at, keep = self.summarize_at, self.keep_recent
        if max_messages is None and (at is None or keep is None):
            raise ConfigurationError(
                "with max_messages=-1, a SummaryConfig needs summarize_at and keep_recent"
            )
        if at is None:
            at = max(2, max_messages * 3 // 4)  # type: ignore[operator]
        if keep is None:
            keep = max(1, max_messages // 2)  # type: ignore[operator]
        if keep >= at:
            raise ConfigurationError(
                f"keep_recent ({keep}) must be less than summarize_at ({at}), or no summary "
                "ever folds a message"
            )
        if max_messages is not None and at > max_messages:
            raise ConfigurationError(
                f"summarize_at ({at}) must be at most max_messages ({max_messages}): the history "
                "never grows past max_messages"
            )
        return at, keep


SUMMARIZED = "chatstate.summarized"
"""The metadata key of a stored summary: how many messages it has folded in, in all."""


class Summaries:
    """The background side of summaries for one :class:`~chatstate.StateMiddleware`: schedules a
    fold per session at a time, and keeps score."""

    __slots__ = (
        "_at",
        "_clock",
        "_keep",
        "_retry_at",
        "_running",
        "config",
        "failed",
        "made",
        "skipped",
        "store",
    )

    def __init__(
        self, store: Any, config: SummaryConfig, max_messages: int | None, clock: Clock
    ) -> None:
        if not isinstance(store, SessionSummaries):
            raise ConfigurationError(
                f"summaries need a store that keeps them (SessionSummaries: load_with_summary() "
                f"and compact()); {type(store).__name__} does not"
            )
        self.store = store
        self.config = config
        self._at, self._keep = config.bounds(max_messages)
        self._clock = clock
        self._running: set[str] = set()  # sessions with a fold running
        self._retry_at: dict[str, float] = {}
        self.made = 0
        """Summaries stored."""
        self.failed = 0
        """Summaries that failed or timed out (each logged, and tried again later)."""
        self.skipped = 0
        """Folds that stored nothing: nothing was left to fold, or the session changed
        otherwise than by turns meanwhile (another fold, a save, a delete)."""

    @property
    def pending(self) -> int:
        """Summaries running now."""
        return len(self._running)

    def framed(self, stored: Message | None) -> Message | None:
        """The system message the provider gets for a stored summary."""
        if stored is None:
            return None
        return _frame(self.config.prefix, stored.text)

    def after_turn(
        self,
        session_id: str,
        length: int,
        loaded: int,
        window: int | None,
        task_group: TaskGroup,
    ) -> None:
        """Start a fold in ``task_group`` if the turn left ``length`` messages at or over the
        threshold, or the window sent (``window`` of the ``loaded`` messages, if known) left some
        out."""
        keep = self._keep
        if window is not None and window < loaded:
            keep = min(keep, max(1, window // 2))
        elif length < self._at:
            return
        if length <= keep or session_id in self._running:
            return
        retry_at = self._retry_at.get(session_id)
        if retry_at is not None:
            if self._clock.monotonic() < retry_at:
                return
            del self._retry_at[session_id]
        try:
            task_group.start_soon(
                self._fold, session_id, keep, name=f"chatstate-summary-{session_id[:40]}"
            )
        except RuntimeError:  # the pipeline's block ended during this turn: a later turn folds
            return
        self._running.add(session_id)

    async def _fold(self, session_id: str, keep: int) -> None:
        config = self.config
        timeout = config.timeout.total_seconds()

        async def fold(
            history: list[Message], summary: Message | None
        ) -> tuple[int, Message] | None:
            count = fold_count(history, keep)
            if not count:
                return None
            with self._clock.fail_after(timeout):
                text = await config.summarizer.summarize(
                    None if summary is None else summary.text, history[:count]
                )
            if not isinstance(text, str) or not text.strip():
                raise ProviderError(
                    f"{type(config.summarizer).__name__}.summarize returned {text!r}, not a summary"
                )
            before = summary.metadata.get(SUMMARIZED, 0) if summary is not None else 0
            folded = (before if isinstance(before, int) else 0) + count
            return count, Message(role="system", content=text, metadata={SUMMARIZED: folded})

        try:
            changed = await self.store.compact(session_id, fold)
        except Exception as exc:
            self.failed += 1
            retry = config.retry_after.total_seconds()
            now = self._clock.monotonic()
            if len(self._retry_at) >= 10_000:
                self._retry_at = {key: at for key, at in self._retry_at.items() if at > now}
            self._retry_at[session_id] = now + retry
            logger.warning(
                "summarising session %r failed (%s: %s); trying again after %g s",
                session_id,
                type(exc).__name__,
                exc,
                retry,
            )
        else:
            if changed:
                self.made += 1
            else:
                self.skipped += 1
        finally:
            self._running.discard(session_id)


def fold_count(history: Sequence[Message], keep: int) -> int:
    """How many of the oldest messages to fold so that about ``keep`` stay, without parting a
    tool call from its results: the kept part starts at a message that is not a tool result."""
    length = len(history)
    count = length - keep
    if count <= 0:
        return 0
    forward = count
    while forward < length and history[forward].role == "tool":
        forward += 1
    if forward < length:
        return forward
    while count > 0 and history[count].role == "tool":  # the tail is one open exchange
        count -= 1
    return count


@functools.lru_cache(maxsize=1024)
def _frame(prefix: str, text: str) -> Message:
    # Cached, so the framed message (and the token count it carries) is made once per summary.
    return Message(role="system", content=prefix + text)
