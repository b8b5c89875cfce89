"""ScriptedProvider: a deterministic, offline provider for demos and tests."""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import anyio

from chatstate.errors import ConfigurationError, ProviderError
from chatstate.messages import Message
from chatstate.providers.base import StreamChunk

__all__ = ["ScriptedProvider", "recall_reply", "summary_reply"]

Reply: TypeAlias = str | Message
Responder: TypeAlias = Callable[[Sequence[Message]], Reply | Awaitable[Reply]]

_PIECE = re.compile(r"\s*\S+\s*|\s+")
_WORD = r"[A-Za-z][\w'-]*"
_FACT = re.compile(
    rf"\bmy ((?:{_WORD} ){{0,2}}?{_WORD}) (?:is|are) (.+?)(?=\s+(?:and|but)\b|[.,!?;\n]|$)",
    re.IGNORECASE,
)
_CALL_ME = re.compile(rf"\b(?:call me|i am called|i'm called) ({_WORD})", re.IGNORECASE)
_LIVE_IN = re.compile(
    rf"\bi (?:live|am living|'m living) in ({_WORD}(?: (?-i:[A-Z])[\w'-]*)*)", re.IGNORECASE
)
_ASK_FACT = re.compile(rf"\bwhat(?:'s| is| are) my ((?:{_WORD} ){{0,2}}{_WORD})\b", re.IGNORECASE)
_ASK_NAME = re.compile(r"\bwho am i\b", re.IGNORECASE)
_ASK_HOME = re.compile(r"\bwhere do i live\b", re.IGNORECASE)
_ASK_COUNT = re.compile(r"\bhow many messages\b", re.IGNORECASE)
_ASK_FIRST = re.compile(r"\bwhat did i (?:first )?say\b", re.IGNORECASE)


def _facts_in(text: str) -> dict[str, str]:
    facts = {key.lower(): value.strip() for key, value in _FACT.findall(text)}
    if match := _CALL_ME.search(text):
        facts["name"] = match.group(1)
    if match := _LIVE_IN.search(text):
        facts["home"] = match.group(1)
    return facts


def recall_reply(messages: Sequence[Message]) -> str:
    """The default answer of :class:`ScriptedProvider`: a tiny rule-based assistant with memory.

    It learns facts that user messages state ("my name is Alice", "my favourite colour is blue",
    "call me Al", "I live in Paris"), or that a system message (a summary) states the same way,
    and answers questions about them ("what's my name?", "who am I?", "where do I live?"), but
    only from the messages it is given: what the history no longer holds, it has forgotten. It
    also answers "how many messages" and "what did I first say".
    """
    users = [message.text for message in messages if message.role == "user"]
    if not users:
        return "Hello! How can I help?"
    question, earlier = users[-1], users[:-1]
    facts: dict[str, str] = {}
    for message in messages:
        if message.role == "system":
            facts.update(_facts_in(message.text))
    for text in earlier:
        facts.update(_facts_in(text))

    if _ASK_NAME.search(question):
        return _recall(facts, "name", "Your name is {}.", "I don't know your name yet.")
    if _ASK_HOME.search(question):
        return _recall(facts, "home", "You live in {}.", "I don't know where you live yet.")
    if match := _ASK_FACT.search(question):
        key = match.group(1).lower()
        return _recall(facts, key, f"Your {key} is {{}}.", f"I don't know your {key} yet.")
    if _ASK_COUNT.search(question):
        count = sum(1 for message in messages[:-1] if message.role != "system")
        return f"I can see {count} earlier messages in this conversation."
    if _ASK_FIRST.search(question):
        return f"You first said: {earlier[0]}" if earlier else "This is the first thing you said."

    stated = _facts_in(question)
    if "name" in stated:
        return f"Nice to meet you, {stated['name']}!"
    if stated:
        return " ".join(
            f"Noted: you live in {value}." if key == "home" else f"Noted: your {key} is {value}."
            for key, value in stated.items()
        )
    return f"You said: {question}"


def summary_reply(messages: Sequence[Message]) -> str:
    """A rule-based summarizer for tests and demos (``ScriptedProvider(summary_reply)`` given to
    :class:`~chatstate.summaries.ProviderSummarizer`): it keeps the facts that the request's
    user-side text states (the previous summary and the transcript), newest last, in words that
    :func:`recall_reply` reads back."""
    facts: dict[str, str] = {}
    for message in messages:
        if message.role == "user":
            for line in message.text.splitlines():
                facts.update(_facts_in(line))
    if not facts:
        return "Nothing of note was said."
    stated = [
        f"I live in {value}." if key == "home" else f"my {key} is {value}."
        for key, value in facts.items()
    ]
    return "The user said: " + " ".join(stated)


def _recall(facts: dict[str, str], key: str, known: str, unknown: str) -> str:
    value = facts.get(key)
    return known.format(value) if value is not None else unknown


class ScriptedProvider:
    """A deterministic offline provider, the test double of a real model.

    - ``ScriptedProvider()`` answers with :func:`recall_reply`: it remembers facts stated earlier in
      the conversation it is given, so multi-turn memory is visible without a network.
    - ``ScriptedProvider(["Hi!", "Bye."])`` returns those replies in order, then raises
      :class:`~chatstate.errors.ProviderError`.
    - ``ScriptedProvider(func)`` calls ``func(messages)`` (sync or async) for each reply.

    Replies may be text or a full assistant :class:`Message` (for tool calls). ``latency`` adds an
    ``anyio.sleep`` per call; ``calls`` keeps the messages of the last ``keep_calls`` calls.
    :meth:`stream` writes the same replies a word at a time.
    """

    def __init__(
        self,
        replies: Iterable[Reply] | Responder | None = None,
        *,
        latency: float | None = None,
        keep_calls: int = 100,
    ) -> None:
        if latency is not None and not latency >= 0:
            raise ConfigurationError(f"latency must be >= 0 seconds, got {latency!r}")
        self._responder: Responder | None
        self._script: Iterator[Reply] | None
        if replies is None:
            self._responder, self._script = recall_reply, None
        elif callable(replies):
            self._responder, self._script = replies, None
        elif isinstance(replies, str | Message):
            raise ConfigurationError("replies must be a sequence of replies, not a single one")
        else:
            self._responder, self._script = None, iter(list(replies))
        self._latency = latency
        self.calls: deque[list[Message]] = deque(maxlen=keep_calls)
        """The messages given to each of the latest calls, oldest first."""
        self.call_count = 0
        """How many times :meth:`complete` was called."""

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        """Answer the conversation ``messages``; ``options`` are accepted and ignored."""
        self.calls.append(list(messages))
        self.call_count += 1
        if self._latency is not None:
            await anyio.sleep(self._latency)
        if self._script is not None:
            reply = next(self._script, None)
            if reply is None:
                raise ProviderError(
                    f"ScriptedProvider ran out of replies after {self.call_count - 1}"
                )
        else:
            assert self._responder is not None
            produced = self._responder(messages)
            reply = await produced if inspect.isawaitable(produced) else produced
        if isinstance(reply, Message):
            return reply
        return Message(role="assistant", content=reply)

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncGenerator[StreamChunk, None]:
        """The reply of :meth:`complete`, a word (with the spaces after it) a chunk, then a last
        chunk with the whole message; it waits for nothing between chunks."""
        reply = await self.complete(messages, **options)
        for piece in _PIECE.findall(reply.text):
            yield StreamChunk(piece)
        yield StreamChunk("", reply)
