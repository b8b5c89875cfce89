"""Session ids for the three usual patterns, and the conversations of a user.

- per user: ``user-{id}``, one history per user (:meth:`Conversations.user_session`);
- per conversation: ``user-{id}-conv-{cid}``, a user's separate chats
  (:meth:`Conversations.session_id`);
- temporary: ``tmp-`` and 128 random bits, unguessable, for anonymous visitors
  (:func:`temporary_session`).

:class:`Conversations` keeps an index of each user's sessions in the store: the conversations
(registered by the :class:`~chatstate.StateMiddleware` after each turn of a session whose id
follows the pattern, or by :meth:`Conversations.record`), their forks (registered by
:func:`~chatstate.transfer.fork_session`), and any other session the application gives the user
(:meth:`Conversations.register`: a temporary session claimed at sign-in). Listing them (most
recently active first, with their metadata, a page at a time by cursor) never scans the keyspace,
and erasing a user's data is one call.
"""

from __future__ import annotations

import base64
import builtins
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from chatstate._background import concurrently
from chatstate._checks import MAX_SESSION_ID_LENGTH, check_session_id, check_ttl
from chatstate.errors import ConfigurationError, InvalidInputError, InvalidSessionIdError
from chatstate.stores._metadata import title_of
from chatstate.stores.base import SessionMetadata, SessionSnapshot

__all__ = [
    "ConversationIndex",
    "ConversationPage",
    "ConversationSummary",
    "Conversations",
    "ErasureReport",
    "owner_of",
    "temporary_session",
]

_USER = "user-"
_CONV = "-conv-"
_SESSION = "\x1f"
"""The prefix of an index member that is a whole session id (a fork, a temporary session): no
session id holds a control character, so no conversation id starts with it."""


def temporary_session() -> str:
    """A fresh, unguessable session id (``tmp-`` and 128 random bits)."""
    return "tmp-" + secrets.token_urlsafe(16)


def owner_of(session_id: str) -> tuple[str, str] | None:
    """For a conversation's session id (``user-{id}-conv-{cid}``): the user's session
    (``user-{id}``) and the conversation id; None for any other id."""
    if not session_id.startswith(_USER):
        return None
    at = session_id.find(_CONV, len(_USER))
    if at <= len(_USER) or at + len(_CONV) == len(session_id):
        return None
    return session_id[:at], session_id[at + len(_CONV) :]


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A session of a user, as the index knows it: a conversation (``conversation_id``), or a
    session registered by its id (a fork, a temporary session: ``conversation_id`` None); when
    it was last active, and (where the store keeps them) its metadata and times."""

    conversation_id: str | None
    session_id: str
    last_active: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def title(self) -> str | None:
        """``metadata["title"]`` if it is a str."""
        return title_of(self.metadata)


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """A page of a user's sessions, most recently active first, and the cursor of the next
    page (None: this is the last)."""

    conversations: list[ConversationSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`Conversations.erase` removed: the id of every session that existed (the
    user's conversations, forks, registered sessions and per-user history)."""

    sessions: list[str]

    def __len__(self) -> int:
        return len(self.sessions)


@runtime_checkable
class ConversationIndex(Protocol):
    """What a store does to index sessions by user (the built-in stores do)."""

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record activity of a member now; it leaves the index ``ttl`` seconds later."""

    async def list_conversations(
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        """``(member, last active)`` pairs, most recent first; expired ones never. (The
        built-in stores also take ``after=(last active, member)``: a cursor.)"""

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget the index; returns every member it held."""


async def index_fork(store: Any, source: str, target: str, *, ttl: float | None) -> bool:
    """Register a fork under its user: the fork's own (its id a conversation's), else the
    source's (the fork registered by its id); False, doing nothing, when neither id is a
    conversation's or the store does not index."""
    if not isinstance(store, ConversationIndex):
        return False
    owner = owner_of(target)
    if owner is None:
        source_owner = owner_of(source)
        if source_owner is None:
            return False
        owner = source_owner[0], _SESSION + target
        ttl = None  # registered by its id: indexed until the user's erase (see register)
    await store.index_conversation(owner[0], owner[1], now=time.time(), ttl=ttl)
    return True


async def index_session(store: Any, session_id: str, *, ttl: float | None) -> bool:
    """Register a conversation's session (``user-{id}-conv-{cid}``) under its user, active now,
    in a store that indexes (what the state middleware does after each turn); False, doing
    nothing, for any other session id or store."""
    owner = owner_of(session_id)
    if owner is None or not isinstance(store, ConversationIndex):
        return False
    await store.index_conversation(owner[0], owner[1], now=time.time(), ttl=ttl)
    return True


class Conversations:
    """The sessions of each user, over a store that can index them.

    A conversation's session (``user-{id}-conv-{cid}``) is registered by the
    :class:`~chatstate.StateMiddleware` after each turn, with the middleware's TTL (or by
    :meth:`record`, with this object's ``ttl``: the TTL the conversation's history has, so that
    no index entry outlives its session); a fork of a registered session by
    :func:`~chatstate.transfer.fork_session`; any other session by :meth:`register`.
    :meth:`page` returns a user's sessions, most recently active first, with their metadata, a
    page at a time by cursor, without scanning the keyspace; :meth:`erase` deletes every session
    of a user and the index.
    """

    def __init__(
        self,
        store: Any,
        *,
        ttl: timedelta | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(store, ConversationIndex):
            raise ConfigurationError(
                f"{type(store).__name__} cannot index conversations (no index_conversation())"
            )
        self.store: Any = store  # a StateStore that is a ConversationIndex too
        self.ttl = check_ttl(ttl)
        self._clock = clock

    @staticmethod
    def user_session(user_id: str) -> str:
        """The per-user session id: ``user-{id}``."""
        if not isinstance(user_id, str) or not user_id or _CONV in user_id:
            raise InvalidSessionIdError(
                f"a user id must be a non-empty str without {_CONV!r}, got {user_id!r}"
            )
        return check_session_id(f"{_USER}{user_id}")

    def session_id(self, user_id: str, conversation_id: str) -> str:
        """The session id of one conversation of a user: ``user-{id}-conv-{cid}``."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise InvalidSessionIdError("a conversation id must be a non-empty str")
        session_id = f"{self.user_session(user_id)}{_CONV}{conversation_id}"
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise InvalidSessionIdError(
                f"user and conversation ids together are too long ({len(session_id)} characters "
                f"with the pattern; the limit is {MAX_SESSION_ID_LENGTH})"
            )
        return check_session_id(session_id)

    async def record(self, user_id: str, conversation_id: str) -> str:
        """Note that the conversation was active now; returns its session id."""
        session_id = self.session_id(user_id, conversation_id)
        await self.store.index_conversation(
            self.user_session(user_id), conversation_id, now=self._clock(), ttl=self.ttl
        )
        return session_id

    async def register(self, user_id: str, session_id: str) -> None:
        """Give the user any session (a temporary session claimed at sign-in, a copy made by
        the application), active now: it is listed with the user's sessions and erased with
        them. A session registered by its id stays in the index until :meth:`erase` (its turns
        may keep it alive for any time; :meth:`page` leaves it out once it no longer exists);
        one of the user's conversations is recorded (:meth:`record`)."""
        user_session, member = self._member(user_id, session_id)
        ttl = self.ttl if not member.startswith(_SESSION) else None
        await self.store.index_conversation(user_session, member, now=self._clock(), ttl=ttl)

    async def fork(self, user_id: str, source: str, target: str, **options: Any) -> SessionSnapshot:
        """:func:`~chatstate.transfer.fork_session` (``options`` as it takes them), the fork
        registered under the user: a fork of any session of theirs (a fork of a fork, of a
        temporary session), which ``fork_session`` alone registers only when one of the two ids
        is a conversation's. The fork's owner is checked before anything is written."""
        from chatstate.transfer import fork_session

        self._member(user_id, target)
        snapshot = await fork_session(self.store, source, target, **options)
        await self.register(user_id, target)
        return snapshot

    def _member(self, user_id: str, session_id: str) -> tuple[str, str]:
        """The user's session and the index member of ``session_id``; InvalidInputError for a
        session that is not the user's to register (the user's own, another user's)."""
        session_id = check_session_id(session_id)
        user_session = self.user_session(user_id)
        if session_id == user_session:
            raise InvalidInputError(f"{session_id!r} is the user's own session: it needs no index")
        owner = owner_of(session_id)
        if owner is not None and owner[0] != user_session:
            raise InvalidInputError(
                f"session {session_id!r} is a conversation of another user ({owner[0]!r})"
            )
        if owner is None and session_id.startswith(_USER):
            raise InvalidInputError(f"session {session_id!r} is another user's own session")
        return user_session, owner[1] if owner is not None else _SESSION + session_id

    async def session_ids(self, user_id: str) -> list[str]:
        """The session ids of every live session of the user, most recent first, and the
        per-user session's last: what to export for a user (``export_sessions``)."""
        user_session = self.user_session(user_id)
        pairs = await self.store.list_conversations(
            user_session, now=self._clock(), offset=0, limit=1 << 30
        )
        return [*(self._session_of(user_id, member) for member, _ in pairs), user_session]

    async def list(
        self, user_id: str, *, limit: int = 20, offset: int = 0
    ) -> list[ConversationSummary]:
        """A page of the user's live sessions, most recently active first, by offset (a page
        shifts when a session becomes active meanwhile: :meth:`page` does not)."""
        if type(limit) is not int or limit < 1 or type(offset) is not int or offset < 0:
            raise ConfigurationError(f"limit must be >= 1 and offset >= 0, got {limit}, {offset}")
        pairs = await self.store.list_conversations(
            self.user_session(user_id), now=self._clock(), offset=offset, limit=limit
        )
        return await self._summaries(user_id, pairs, keep_missing=True)

    async def page(
        self, user_id: str, *, limit: int = 20, cursor: str | None = None
    ) -> ConversationPage:
        """A page of the user's live sessions, most recently active first, each with its
        metadata and times (where the store keeps them), and the cursor of the next page. A
        session active again since an earlier page moves to the top (the next refresh shows
        it) and is not repeated further down; a session that no longer exists is left out."""
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise ConfigurationError(f"limit must be an int from 1 to 1000, got {limit!r}")
        after = None if cursor is None else _read_cursor(cursor)
        pairs = await self.store.list_conversations(
            self.user_session(user_id), now=self._clock(), offset=0, limit=limit + 1,
            **({} if after is None else {"after": after}),
        )  # fmt: skip
        more = len(pairs) > limit
        pairs = pairs[:limit]
        found = await self._summaries(user_id, pairs, keep_missing=False)
        return ConversationPage(found, _cursor(pairs[-1]) if more else None)

    async def erase(self, user_id: str, *, scan: bool = False) -> ErasureReport:
        """Delete every session of the user (conversations, forks, registered sessions and the
        per-user history) and the index, for a privacy request; reports the sessions that
        existed. Safe to repeat: the index goes last, so a failure halfway leaves nothing
        unlisted. ``scan`` also deletes every session whose id follows the user's patterns but
        was never registered (written before chatstate registered conversations, or around the
        middleware), by scanning every session id: slow on a large store, and thorough."""
        user_session = self.user_session(user_id)
        pairs = await self.store.list_conversations(user_session, now=0.0, offset=0, limit=1 << 30)
        ids = [self._session_of(user_id, member) for member, _ in pairs]
        if scan:
            prefix = user_session + _CONV
            async for session_id in self.store.session_ids():
                if session_id.startswith(prefix) and session_id not in ids:
                    ids.append(session_id)
        removed: builtins.list[str] = []
        await self._delete_all([*ids, user_session], removed)
        dropped = await self.store.drop_conversations(user_session)
        # Every member the drop took, not only those registered since the listing: a turn that
        # wrote a session again after its delete above registered it again before the drop.
        await self._delete_all([self._session_of(user_id, member) for member in dropped], removed)
        return ErasureReport(list(dict.fromkeys(removed)))

    async def _delete_all(
        self, session_ids: builtins.list[str], removed: builtins.list[str]
    ) -> None:
        async def delete(session_id: str) -> None:
            if await self.store.delete(session_id):
                removed.append(session_id)

        await concurrently(delete, session_ids)

    def _session_of(self, user_id: str, member: str) -> str:
        if member.startswith(_SESSION):
            return member[len(_SESSION) :]
        return self.session_id(user_id, member)

    async def _summaries(
        self, user_id: str, pairs: builtins.list[tuple[str, float]], *, keep_missing: bool
    ) -> builtins.list[ConversationSummary]:
        """The summaries of index members, with each session's metadata (one read each, all at
        once) where the store keeps it."""
        sessions = [self._session_of(user_id, member) for member, _ in pairs]
        infos: dict[str, Any] | None = None
        if isinstance(self.store, SessionMetadata) and sessions:
            infos = {}
            reader = self.store.metadata

            async def read(session_id: str) -> None:
                infos[session_id] = await reader(session_id)  # type: ignore[index]

            try:
                await concurrently(read, sessions)
            except ConfigurationError:  # a store over a backend that keeps no metadata
                infos = None
        found = []
        for (member, at), session_id in zip(pairs, sessions, strict=True):
            info = None if infos is None else infos.get(session_id)
            if info is None and infos is not None and not keep_missing:
                continue
            found.append(
                ConversationSummary(
                    None if member.startswith(_SESSION) else member,
                    session_id,
                    datetime.fromtimestamp(at, UTC),
                    *(() if info is None else (info.metadata, info.created_at, info.updated_at)),
                )
            )
        return found


def _cursor(pair: tuple[str, float]) -> str:
    raw = json.dumps([pair[1], pair[0]], ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: object) -> tuple[float, str]:
    # A cursor comes back from a client: only a time (finite, of a date: NaN, inf and 1e308 fail
    # a backend's conversions) and a member that could be in an index (no surrogate or NUL,
    # which no store can take) pass to the store. Checked with ifs, not asserts (python -O).
    try:
        if not isinstance(cursor, str):
            raise TypeError
        at, member = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if type(at) not in (int, float) or type(member) is not str:
            raise TypeError
        datetime.fromtimestamp(at, UTC)  # NaN, inf or out of range: raises
        check_session_id(member.removeprefix(_SESSION))
        return float(at), member
    except Exception:
        raise InvalidInputError(f"not a cursor of Conversations.page: {cursor!r}"[:200]) from None
