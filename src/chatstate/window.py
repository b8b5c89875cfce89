"""Turn-aware windows: the history a provider gets never splits a tool call from its results.

Whatever bounds a history (``max_messages`` on write, a load ``limit``), the cut can fall inside a
tool exchange: a window that starts with tool results whose call was trimmed away, or holds an
assistant's tool calls without all of their results. Chat APIs reject both. :func:`valid_window`
keeps the longest suffix of a window that is valid by these rules, in one pass, with no round trip:

- an assistant message with tool calls is followed at once by one tool message for each of its
  calls (in any order), and by nothing else before they are all there;
- a tool message answers a call of the assistant message just before its block.

With a token budget (:class:`TokenBudget`), :meth:`TokenBudget.window` keeps the longest such suffix
whose tokens fit in what the budget leaves after the reply's reserve and the messages always sent
(the system prompt, pinned messages, the summary, the turn's own message). Token counts come with
the messages (counted once, when they were stored), so a window costs a walk back from the newest
message to the first that does not fit, and no tokenizer runs on a load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatstate.messages import Message
from chatstate.tokens import Tally

__all__ = ["TokenBudget", "fit_window", "is_valid_window", "valid_window"]


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
        """The longest valid suffix of ``history`` that fits beside ``fixed`` (sent before it)
        and ``new`` (after it)."""
        tally = self.tally
        left = self.max_tokens - self.reply_tokens - tally.total(fixed) - tally.total(new)
        return fit_window(history, new, left, tally)


def valid_window(history: Sequence[Message], new: Sequence[Message] = ()) -> list[Message]:
    """The longest suffix of ``history`` that, followed by ``new`` (the turn's own messages, such
    as a tool result answering the last call), is a valid window."""
    return list(history[_longest_valid(history, new, None, None) :])


def fit_window(
    history: Sequence[Message], new: Sequence[Message], budget: int, tally: Tally
) -> list[Message]:
    """The longest suffix of ``history`` that, followed by ``new``, is a valid window, and whose
    messages take at most ``budget`` tokens by ``tally`` (which counts only what it walks past)."""
    return list(history[_longest_valid(history, new, budget, tally) :])


def is_valid_window(messages: Sequence[Message]) -> bool:
    """Whether ``messages`` follow the rules of the module."""
    return _longest_valid(messages, (), None, None) == 0


def _longest_valid(
    history: Sequence[Message], new: Sequence[Message], budget: int | None, tally: Tally | None
) -> int:
    """Where the longest valid suffix of ``history`` (followed by ``new``) that fits ``budget``
    starts (``len(history)``: none).

    One walk back from the newest message, which stops at the first message that does not fit or
    that no valid suffix can start at or before; so a window costs what it keeps, not what is
    stored. A suffix is valid if it starts at a message that is not a tool result, and every
    message from there on that is not a tool result is followed by exactly the results of its
    calls (none if it calls nothing).
    """
    block: list[str | None] = []  # the tool results just after the message looked at
    for message in reversed(new):  # the turn's own messages: never counted, never a start
        if message.role == "tool":
            block.append(message.tool_call_id)
        elif _answered(message, block):
            block = []
        else:
            return len(history)
    best = index = len(history)
    total = 0
    fingerprint = tally.fingerprint if tally is not None else 0
    for message in reversed(history):
        index -= 1
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
        if message.role == "tool":
            block.append(message.tool_call_id)
            continue
        if block or message.tool_calls:
            if not _answered(message, block):
                break  # a broken exchange: no suffix that holds it is valid
            block = []
        best = index
    return best


def _answered(message: Message, results: list[str | None]) -> bool:
    """Whether a message that is not a tool result may come just before the tool ``results``:
    they are exactly the results of its calls (none if it calls nothing)."""
    calls = message.tool_calls
    if not results:
        return not calls
    return len(calls) == len(results) and {call.id for call in calls} == set(results)
