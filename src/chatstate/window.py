"""Turn-aware windows: the history a provider gets never splits a tool call from its results.

Chat APIs (OpenAI's and those that copy it) accept a tool exchange only whole: an assistant message
with tool calls must be followed at once by one ``tool`` message for each of its calls (in any
order), and by nothing else before they are all there; a ``tool`` message must answer a call of the
assistant message just before its block. A stored history can break these rules in two ways:

- a bound (``max_messages`` on write, a load ``limit``, a token budget) cut through an exchange,
  leaving results whose call is gone at the start of the window;
- an exchange was never finished: the app crashed or was cancelled between a model's tool call and
  its results, or stored a result whose call it never stored.

**Orphans are dropped, not closed.** A call without all of its results (the assistant message that
made it, with any results it got) and a result without its call are left out of what the provider
is sent, wherever they are, and everything else is sent: one broken exchange never hides the
history before it. The stored history is not changed. We chose dropping over closing an unanswered
call with a synthetic "interrupted" result because a synthetic result puts words in a tool's mouth
that the model may act on (retry the call, report a failure), costs tokens, and would have to be
invented anew on every load; dropping sends only what was really said. (The streamed and tool turns
of :mod:`chatstate.pipeline` never store half an exchange, so orphans come from older data, other
writers or crashes.)

:func:`valid_window` makes such a window of a history in one walk back from the newest message.
With a token budget (:class:`TokenBudget`), :meth:`TokenBudget.window` keeps the longest suffix of
the repaired history (never half an exchange) whose tokens fit in what the budget leaves after the
reply's reserve and the messages always sent (the system prompt, pinned messages, the summary, the
turn's own messages). Token counts come with the messages (counted once, when they were stored), so
a window costs a walk back from the newest message to the first that does not fit, and no tokenizer
runs on a load; orphans are never counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatstate.messages import Message
from chatstate.tokens import Tally

__all__ = ["TokenBudget", "fit_window", "is_valid_window", "select_window", "valid_window"]


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """The tokens a request may take (``max_tokens``), less a reserve for the reply
    (``reply_tokens``), counted by ``tally``; made by the state middleware from its config."""

    max_tokens: int
    reply_tokens: int
    tally: Tally

    def window(
        self, history: Sequence[Message], *, fixed: Sequence[Message], new: Sequence[Message]
    ) -> list[Message]:
        """The longest suffix of ``history``, orphans left out, that fits beside ``fixed`` (sent
        before it) and ``new`` (after it)."""
        return select_window(history, new, fixed=fixed, budget=self)[1]


def valid_window(history: Sequence[Message], new: Sequence[Message] = ()) -> list[Message]:
    """``history`` without its orphans (see the module), as it may be sent before ``new`` (the
    turn's own messages: tool results at their start answer the last call of ``history``)."""
    return _select(history, new, None, None)[1]


def fit_window(
    history: Sequence[Message], new: Sequence[Message], budget: int, tally: Tally
) -> list[Message]:
    """The longest suffix of ``history`` without its orphans that, followed by ``new``, takes at
    most ``budget`` tokens by ``tally`` (which counts only what it walks past and keeps)."""
    return _select(history, new, budget, tally)[1]


def select_window(
    history: Sequence[Message],
    new: Sequence[Message],
    *,
    fixed: Sequence[Message] = (),
    budget: TokenBudget | None = None,
) -> tuple[int, list[Message]]:
    """The window of ``history`` sent between ``fixed`` and ``new`` (within ``budget``, if any),
    and the index in ``history`` of the oldest message the bounds kept (orphans dropped after it
    do not move it): what the provider middleware sends."""
    if budget is None:
        return _select(history, new, None, None)
    tally = budget.tally
    left = budget.max_tokens - budget.reply_tokens - tally.total(fixed) - tally.total(new)
    return _select(history, new, left, tally)


def is_valid_window(messages: Sequence[Message]) -> bool:
    """Whether ``messages`` follow the rules of the module (no orphan anywhere)."""
    start, window = _select(messages, (), None, None)
    return start == 0 and len(window) == len(messages)


def _select(
    history: Sequence[Message], new: Sequence[Message], budget: int | None, tally: Tally | None
) -> tuple[int, list[Message]]:
    """Where the window of ``history`` starts, and the window: the longest suffix that fits
    ``budget``, orphans left out.

    One walk back from the newest message, a unit at a time: a message with no calls, or a
    message with calls and the block of results after it. A unit whose calls are not all answered
    in its block is dropped whole, as are results that answer no call of their unit; the walk
    stops at the first unit that does not fit, so a window costs what it keeps, not what is
    stored. The tool results at the start of ``new`` answer the newest unit of ``history``.
    """
    answers: list[str | None] = []  # the ids of the results that open `new`
    for message in new:
        if message.role != "tool":
            break
        answers.append(message.tool_call_id)
    size = len(history)
    best = size
    total = 0
    fingerprint = tally.fingerprint if tally is not None else 0
    dropped: set[int] = set()
    block: list[int] = []  # indices of the tool results after the message looked at, newest first
    for index in range(size - 1, -1, -1):
        message = history[index]
        if message.role == "tool":
            block.append(index)
            continue
        if block or message.tool_calls or answers:
            kept = _answered(message, history, block, answers)
            answers = []  # only the newest unit may be answered by the turn's own messages
            if kept is None:  # an unanswered call: the message and its block go
                dropped.add(index)
                dropped.update(block)
                block = []
                continue
            if len(kept) != len(block):
                dropped.update(set(block).difference(kept))
            block = []
            if tally is not None:
                for position in kept:
                    total += _tokens(history[position], fingerprint, tally)
        if tally is not None:
            # The count the message carries (see messages.cache_token_count), else counted now.
            try:
                tokens: int | None = message._tokens  # type: ignore[attr-defined]  # its slot
            except AttributeError:  # a copy that validation did not see
                tokens = None
            if tokens is not None and tokens >> 32 == fingerprint:
                total += tokens & 0xFFFF_FFFF
            else:
                total += tally(message)
            if total > budget:  # type: ignore[operator]
                break
        best = index
    if not dropped:
        return best, list(history[best:])
    return best, [history[i] for i in range(best, size) if i not in dropped]


def _tokens(message: Message, fingerprint: int, tally: Tally) -> int:
    try:
        tokens: int | None = message._tokens  # type: ignore[attr-defined]  # its slot
    except AttributeError:  # a copy that validation did not see
        tokens = None
    if tokens is not None and tokens >> 32 == fingerprint:
        return tokens & 0xFFFF_FFFF
    return tally(message)


def _answered(
    message: Message, history: Sequence[Message], block: list[int], answers: list[str | None]
) -> list[int] | None:
    """The results of ``block`` (indices into ``history``, newest first) that ``message``'s calls
    keep, when every call is answered there or in ``answers``; None when some call is not."""
    calls = message.tool_calls
    if not calls:
        return []  # results after a message that calls nothing are all orphans
    owed = {call.id for call in calls}
    kept = []
    for position in reversed(block):  # oldest first: the first answer to a call is the one kept
        call_id = history[position].tool_call_id
        if call_id in owed:
            owed.discard(call_id)
            kept.append(position)
    owed.difference_update(answers)
    return None if owed else kept
