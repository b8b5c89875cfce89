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
    messages = [*history, *new]
    start = _first_valid_start(messages)
    if start > len(history):  # not even the turn's own messages hold: send them as they are
        return []
    return list(history[start:])


def fit_window(
    history: Sequence[Message], new: Sequence[Message], budget: int, tally: Tally
) -> list[Message]:
    """The longest suffix of ``history`` that, followed by ``new``, is a valid window, and whose
    messages take at most ``budget`` tokens by ``tally`` (which counts only what it walks past).

    A suffix of a valid window is valid exactly when it starts at a message that is not a tool
    result, so the walk back keeps the last such start it reaches within the budget.
    """
    first = _first_valid_start([*history, *new])
    best = len(history)
    if first >= best:
        return []
    total = 0
    for index in range(best - 1, first - 1, -1):
        message = history[index]
        total += tally(message)
        if total > budget:
            break
        if message.role != "tool":
            best = index
    return list(history[best:])


def is_valid_window(messages: Sequence[Message]) -> bool:
    """Whether ``messages`` follow the rules of the module."""
    return _first_valid_start(messages) == 0


def _first_valid_start(messages: Sequence[Message]) -> int:
    """The smallest index from which the messages are valid (``len(messages)`` if none)."""
    start = 0  # every block from here on has been valid
    index, count = 0, len(messages)
    while index < count:
        message = messages[index]
        if message.role == "tool":  # a result with no call before it in its block: cut here
            index += 1
            start = index
            continue
        index += 1
        if not message.tool_calls:
            continue
        pending = {call.id for call in message.tool_calls}
        while index < count and pending and messages[index].role == "tool":
            call_id = messages[index].tool_call_id
            if call_id not in pending:
                break  # a result of another call: this block is broken
            pending.discard(call_id)
            index += 1
        if pending:  # calls without all their results: nothing up to here can be sent
            start = index
    return start
