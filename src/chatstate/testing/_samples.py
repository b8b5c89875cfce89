"""What the conformance suite writes: messages of every kind, turns, summaries and folds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from chatstate.messages import ImagePart, Message, TextPart, ToolCall
from chatstate.stores.base import Fold, SessionSummaries, SessionTransfer, StateStore

AdvanceTime = Callable[[float], Awaitable[None]]


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def sample_conversation() -> list[Message]:
    """A conversation using every kind of message: parts, parallel tool calls and their results,
    names, metadata and non-ASCII text."""
    return [
        Message(role="system", content="You are terse."),
        Message(
            role="user",
            content=(TextPart(text="What is in this picture? 🌍"), ImagePart(url="data:,x")),
            name="alice",
            metadata={"client": "web", "tags": ["a", "b"], "nested": {"n": 1, "ok": True}},
        ),
        Message(
            role="assistant",
            content=None,
            tool_calls=(
                ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}'),
                ToolCall(id="call_2", name="time", arguments={"tz": "Europe/Paris"}),
            ),
        ),
        Message(role="tool", content='{"temp": 21}', tool_call_id="call_1", name="weather"),
        Message(role="tool", content="14:00", tool_call_id="call_2", name="time"),
        Message(role="assistant", content="Sunny, 21 °C, at 14:00.\nZeile 2: ünïcödé"),
    ]


def _turns(count: int, prefix: str = "m") -> list[Message]:
    return [_user(f"{prefix}{index}") for index in range(count)]


def _summary(text: str) -> Message:
    return Message(role="system", content=f"summary: {text}", metadata={"folded": True})


def _fold_one(text: str) -> Fold:
    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        return 1, _summary(text)

    return fold


def _summaries(store: StateStore) -> SessionSummaries:
    if not isinstance(store, SessionSummaries):
        pytest.skip(f"{type(store).__name__} keeps no summaries (it is not a SessionSummaries)")
    return store


def _transfers(store: StateStore) -> SessionTransfer:
    if not isinstance(store, SessionTransfer):
        pytest.skip(f"{type(store).__name__} has no snapshot/restore (not a SessionTransfer)")
    return store


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"
