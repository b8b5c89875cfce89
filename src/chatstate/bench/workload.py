"""What the benchmark sessions do: messages of real English text, the floors' common interface,
and the workloads (named steps run in order per turn) shared by the in-memory and Redis suites."""

from __future__ import annotations

import abc
import argparse
import functools
import itertools
import json
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeAlias, TypeVar

from chatstate.messages import Message
from chatstate.middleware import ProviderMiddleware, StateMiddleware, StateMiddlewareConfig
from chatstate.pipeline import Pipeline
from chatstate.stores.base import StateStore
from chatstate.tokens import ESTIMATE, Tally
from chatstate.window import TokenBudget

_ESTIMATE = Tally(ESTIMATE)

TTL_SECONDS = 3600
"""The expiry every benchmark append sets, as an app with 1-hour sessions would."""

LONG_HISTORY = 1000
"""Messages stored per session in the long-history scenario."""

LARGE_MESSAGE_BYTES = 2048
"""The payload of the large-message scenario (2 KiB)."""

READS_PER_WRITE = 10
"""Loads per append in the read-heavy scenario."""

# Docstrings of the standard library: real English prose. Repeated characters would compress and
# encode unrealistically well and prove nothing (see NOTES.md).
_PROSE_SOURCES: tuple[object, ...] = (
    str, dict, list, set, frozenset, tuple, int, float, bytes, bytearray, range, slice, object,
    type, zip, map, filter, enumerate, sorted, print, open, property, super, re, json, argparse,
)  # fmt: skip


# What `python -OO`, which strips docstrings, still has.
_PROSE_FALLBACK = (
    "Conversation state is the history a chat application keeps for each session, so that a "
    "stateless model sees everything said so far. Each request loads the newest messages, sends "
    "them with the new one, and stores the reply, bounded in length and expiring after a while."
)


@functools.cache
def _prose() -> str:
    text = " ".join(getattr(source, "__doc__", None) or "" for source in _PROSE_SOURCES)
    text += " " + _PROSE_FALLBACK
    # ASCII only, one space between words: then a character is a byte and sizes are exact.
    return " ".join(text.encode("ascii", "ignore").decode().split())


def english_text(size: int, index: int = 0) -> str:
    """``size`` bytes of English prose; different ``index`` values give different passages."""
    prose = _prose()
    start = (index * 7919) % len(prose)  # a prime stride, so neighbouring messages differ
    if start + size <= len(prose):
        return prose[start : start + size]
    return (prose[start:] + " " + prose * (size // len(prose) + 1))[:size]


def conversation(count: int, size: int, *, start: int = 0) -> list[Message]:
    """``count`` messages of ``size``-byte English text, user and assistant in turn."""
    roles = ("user", "assistant")
    return [
        Message(role=roles[index % 2], content=english_text(size, start + index))
        for index in range(count)
    ]


EntryT = TypeVar("EntryT")


class Floor(abc.ABC, Generic[EntryT]):
    """A floor: the work of a store written by hand, the way a careful user would, behind the
    two calls the scenarios make (``max_messages`` None or -1: keep everything). Appends take the
    caller's messages; a load gives what the floor decodes entries into (``Message`` objects, or
    plain dicts for the naive Redis floor)."""

    @abc.abstractmethod
    async def load(self, session_id: str, *, limit: int | None = None) -> list[EntryT]: ...

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: float | None = None,
    ) -> int:
        keep = max_messages if max_messages is not None and max_messages > 0 else None
        return await self._append(session_id, messages, keep, ttl)

    @abc.abstractmethod
    async def _append(
        self, session_id: str, messages: Sequence[Message], keep: int | None, ttl: float | None
    ) -> int: ...


Backend: TypeAlias = StateStore | Floor[Any]
"""What a scenario runs on: one of our stores, or a floor."""


Step = Callable[[str], Awaitable[object]]
"""One operation on the session whose id it is given."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What one turn of one session does: named steps, run in order and timed one by one."""

    steps: tuple[tuple[str, Step], ...]


@dataclass(frozen=True, slots=True)
class Params:
    """The shape of a scenario's messages: history bound, the turn's two messages, the TTL.

    With ``fresh``, every turn (and every seeded session) gets messages of its own, as in a real
    app: a store that remembers what it decoded (the Redis store does) must not be flattered by
    the same bytes coming back turn after turn. Both sides of a comparison pay the same for it.
    """

    history: int
    message_bytes: int
    turn: tuple[Message, Message]
    ttl: int = TTL_SECONDS
    fresh: bool = False
    counted: bool = False
    """Seeded messages carry their token counts (by the default estimate)."""
    _numbers: Iterator[int] = field(default_factory=itertools.count, compare=False, repr=False)

    @classmethod
    def of(
        cls, *, history: int, message_bytes: int, fresh: bool = False, counted: bool = False
    ) -> Params:
        user, reply = conversation(2, message_bytes, start=history)
        return cls(
            history=history,
            message_bytes=message_bytes,
            turn=(user, reply),
            fresh=fresh,
            counted=counted,
        )

    def next_turn(self) -> tuple[Message, Message]:
        """The turn's user message and reply: new ones with ``fresh``, else always the same."""
        if not self.fresh:
            return self.turn
        user, reply = self.turn
        number = next(self._numbers)
        return (
            Message(role="user", content=_numbered(user.text, number)),
            Message(role="assistant", content=_numbered(reply.text, number)),
        )

    def history_of(self, count: int) -> list[Message]:
        """``count`` messages to seed a session with: new ones with ``fresh``."""
        messages = conversation(count, self.message_bytes)
        if self.fresh:
            number = next(self._numbers)
            messages = [
                message.model_copy(update={"content": _numbered(message.text, number)})
                for message in messages
            ]
        if self.counted:
            _ESTIMATE.total(messages)  # a count kept with each message, and stored with it
        return messages  # immutable: without fresh, shared by all sessions


def _numbered(text: str, number: int) -> str:
    """``text`` with ``number`` written over its start: unique, and the same size."""
    mark = f"{number:x} "
    return mark + text[len(mark) :] if len(text) > len(mark) else mark[: len(text)]


class InstantProvider:
    """Answers at once with a ready reply (the ``reply`` option, or the one it was made with):
    the benchmark measures the pipeline, not a model."""

    def __init__(self, reply: Message) -> None:
        self.reply = reply

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        reply = options.get("reply", self.reply)
        assert isinstance(reply, Message)
        return reply


def load_only(backend: Backend, params: Params) -> Workload:
    """``load(limit=history)``."""
    limit = params.history
    return Workload((("load", lambda session_id: backend.load(session_id, limit=limit)),))


def windowed_load(backend: Backend, params: Params) -> Workload:
    """``load(limit=history)``, then the token window the provider middleware makes of it, with a
    budget that every message fits (the whole history walked: the most a window costs)."""
    limit = params.history
    budget = TokenBudget(max_tokens=1 << 40, reply_tokens=0, tally=_ESTIMATE)
    new = (params.turn[0],)

    async def step(session_id: str) -> list[Message]:
        return budget.window(await backend.load(session_id, limit=limit), fixed=(), new=new)

    return Workload((("load", step),))


def load_all(backend: Backend, params: Params) -> Workload:
    """``load()`` of the whole history, as ``max_messages=-1`` does every turn."""
    return Workload((("load", lambda session_id: backend.load(session_id)),))


def _append_step(backend: Backend, params: Params) -> Step:
    keep, ttl, next_turn = params.history, params.ttl, params.next_turn
    return lambda session_id: backend.append(session_id, next_turn(), max_messages=keep, ttl=ttl)


def append_only(backend: Backend, params: Params) -> Workload:
    """``append`` of the turn's two messages, trimmed to ``history``, expiry refreshed."""
    return Workload((("append", _append_step(backend, params)),))


def turn(backend: Backend, params: Params) -> Workload:
    """What the state middleware does per request: load the history, then append the turn."""
    return Workload((*load_only(backend, params).steps, ("append", _append_step(backend, params))))


def read_heavy(backend: Backend, params: Params) -> Workload:
    """:data:`READS_PER_WRITE` loads, then one append."""
    return Workload(
        (*load_only(backend, params).steps * READS_PER_WRITE, *append_only(backend, params).steps)
    )


def pipeline_turn(store: StateStore, params: Params) -> Workload:
    """A turn through ``Pipeline.execute_with_session``: StateMiddleware and ProviderMiddleware
    over ``store``, with an instant provider."""
    config = StateMiddlewareConfig(max_messages=params.history, ttl=timedelta(seconds=params.ttl))
    pipe = Pipeline(
        StateMiddleware(store, config),
        ProviderMiddleware(InstantProvider(params.turn[1])),
    )
    next_turn = params.next_turn

    async def step(session_id: str) -> object:
        user, reply = next_turn()
        return await pipe.execute_with_session(session_id, "user", user.text, reply=reply)

    return Workload((("turn", step),))


def hand_written_turn(backend: Backend, params: Params) -> Workload:
    """The pipeline turn's floor: the same work written by hand, with no chain around it: build
    the message, load, call the provider, append the message and the reply."""
    provider = InstantProvider(params.turn[1])
    keep, ttl, next_turn = params.history, params.ttl, params.next_turn

    async def step(session_id: str) -> Message:
        user, reply = next_turn()
        message = Message(role="user", content=user.text)
        history = await backend.load(session_id, limit=keep)
        answer = await provider.complete([*history, message], reply=reply)
        await backend.append(session_id, (message, answer), max_messages=keep, ttl=ttl)
        return answer

    return Workload((("turn", step),))


class _Commands:
    """Answers every message itself, as a command handler would: no model, no history needed."""

    def __init__(self, params: Params) -> None:
        self._next_turn = params.next_turn

    async def __call__(self, context: Any, call_next: Any) -> None:
        context.response = self._next_turn()[1]
        context.new_messages.append(context.response)


def _command_turn(store: StateStore, params: Params, *, lazy: bool) -> Workload:
    config = StateMiddlewareConfig(
        max_messages=params.history, ttl=timedelta(seconds=params.ttl), lazy=lazy
    )
    pipe = Pipeline(StateMiddleware(store, config), _Commands(params))
    text = params.turn[0].text
    return Workload(
        (("turn", lambda session_id: pipe.execute_with_session(session_id, "user", text)),)
    )


def lazy_command_turn(store: StateStore, params: Params) -> Workload:
    """A pipeline turn answered without the history, with ``lazy=True``: no load at all."""
    return _command_turn(store, params, lazy=True)


def eager_command_turn(store: StateStore, params: Params) -> Workload:
    """The same turn with ``lazy=False``: the history is loaded, and not used."""
    return _command_turn(store, params, lazy=False)


def hand_written_command_turn(backend: Backend, params: Params) -> Workload:
    """By hand, a turn that needs no history: store the message and the answer."""
    keep, ttl, next_turn, text = params.history, params.ttl, params.next_turn, params.turn[0].text

    async def step(session_id: str) -> int:
        message = Message(role="user", content=text)
        return await backend.append(
            session_id, (message, next_turn()[1]), max_messages=keep, ttl=ttl
        )

    return Workload((("turn", step),))
