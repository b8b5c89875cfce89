"""The storage interface under every store: what a backend (memory, SQLite, Redis, yours) writes.

A backend stores *entries* (opaque to it: the bytes the codec made, or, in the in-memory backend,
the objects themselves) in one ordered list per session, and a few things beside each list: the
summary's entry, the expiry, and two numbers. The store core (:mod:`chatstate.stores._core`) does
everything else once for every backend: it checks the input, encodes and decodes, maps errors,
times and counts the calls, runs leases and folds.

Sequence numbers
    Every entry has a number, unique within its session: the first entry ever appended is 0
    (or any start the backend likes) and each appended entry takes the next. A number is never
    given twice in a session's life: trimming and compaction remove entries from the head, a
    pop, an edit's removal or truncation remove some from anywhere, and none of them renumbers;
    the numbers they freed stay unused (the next append numbers on after the highest number the
    session ever gave), and a replace numbers its entries on after them too (unless it is given
    the numbers: a restore that keeps a snapshot's ids writes them as they were, the one write
    that may give a number again). A session's numbers may so have gaps: a read returns the
    number of its first entry and, where its entries' numbers do not run on from it without a
    gap, the number of each (:attr:`Page.numbers`). Numbers stay below 10**15. The core
    knows which entries a page covers, a compaction names what it folds by number, never by
    comparing bytes, and the numbers are the message ids that the store hands out
    (:meth:`~chatstate.stores.BackendStore.history`). Only a deleted (or expired) session may
    number again from its start.

Version
    A number that goes up by exactly one with every write of the session (append, save,
    compaction, restore); 0 means "no session". A session deleted and written again never repeats
    a version a reader may have seen (it starts from a random number). The near cache relies on
    both: an append that made version ``v + 1`` followed the kept ``v`` with nothing between.

Generation
    A number that changes with every write that is not an append: a save, a compaction, a restore,
    and the session's creation (random, like the version). A compaction commits only if the
    generation it read is still the session's: appends meanwhile are fine (their entries have
    larger numbers and stay), anything else means the history it summarised is gone.

A backend that keeps its sessions in this process's memory may also offer
``entries_now(session_id, limit) -> list`` (a plain method, not a coroutine): the newest ``limit``
entries as :meth:`Backend.read` would give them. The core's plain load then calls it without an
await (the in-memory backend does: a load there costs under a microsecond). Likewise
``append_now(session_id, entries, max_entries, ttl, write_id, fence)``: :meth:`Backend.append`
as a plain call, its :class:`Written` as a tuple ``(length, version, trimmed, applied)``, which
the core's appends call instead (a coroutine, a Written and the keywords are a tenth of an
in-memory append).

A backend may also offer ``async pop(session_id, count, *, write_id, fence) -> Popped``: remove
the newest ``count`` entries and return them, in one atomic step (the built-in backends do;
:class:`~chatstate.stores.ItemStore` and the store's ``pop`` and ``undo`` need it). A pop is a
write like the others: it carries a write id and a fence, changes the version and the generation
(the numbers it freed stay unused), keeps the expiry, and a pop that empties the session deletes
it (its write ids stay, as after a delete). A pop whose write id is remembered is not applied
again: it returns ``Popped(entries, ..., applied=False)`` with the entries its first run removed
where the backend still has them (Redis keeps those of the session's last pop) and none
otherwise.

And the two methods of :class:`Editing`, which the store's history operations need (the
built-in backends have them): ``read_range``, a page of entries before or after a number, with
their numbers; and ``edit``, which replaces or removes one entry by its number, optionally
removes every entry after it, and can be made conditional on the session's version.

Write ids and fences
    Every write (append, replace, delete, compact) carries ``write_id``: a token of 16
    lowercase hex digits (64 bits). The backend remembers the tokens of the session's last 32
    writes in the session's own storage, expiring with it, and keeps them for 600 s after a
    delete (:mod:`chatstate.stores._writes` has the constants, and the helpers a backend in
    Python can use). A write whose token it remembers is not applied again: it returns what an
    applied one would (``Written.applied`` False; a delete, whether the session existed when it
    first ran, or True; a compaction True). Retrying a write is then always safe.

    A write may also carry ``fence``: the token of the lease its caller holds. If that token
    does not hold the session's lease now, the backend raises :class:`Fenced` and writes
    nothing, in the same atomic step (a repeated write is recognised first: it was applied
    while the lease was held).

Session metadata (the optional :class:`Describing` protocol)
    A backend that also keeps each session's *metadata* (a small document of the application's,
    encoded by the codec into one entry, opaque to the backend like the others) and two times
    (Unix seconds, by the backend's clock): ``created``, when the session was created (kept by
    every later write, gone with the session), and ``updated``, when its history was last
    written (an append, a replace, an edit or a pop; not a compaction, not a metadata write, not
    a read). Such a backend has :meth:`Describing.write_meta`, and its other methods take
    keywords the core passes only to it:

    - ``read(..., meta=True)`` fills :attr:`Page.meta`, :attr:`Page.created` and
      :attr:`Page.updated` in the same step (0.0: a time the backend does not know, as for a
      session written before it kept them);
    - ``append(..., meta=entry)`` writes the metadata entry with the entries, atomically;
    - ``replace(..., meta=entry | None)`` makes ``meta`` the session's metadata (None: none);
      without the keyword (``meta=KEEP``) a replace keeps the metadata the session has;
    - ``snapshot`` returns the metadata entry in :attr:`RawSession.meta`.

    The metadata expires with the session (a sliding ``touch`` extends it too), and goes with it
    (a delete, or a pop or edit that empties the session).

The conversation index
    Members of a user's index are short texts (the store makes them; a conversation id, or a
    session id with a prefix), each with its last activity and its deadline. A listing is
    newest first, ties broken by the member, descending (so a cursor is exact); given
    ``after=(last_active, member)``, it starts after that pair in that order (the core passes
    ``after`` only when a caller pages by cursor).

Every method is one atomic step (one Lua script, one transaction) and, on a networked backend,
one round trip. Methods raise the backend's own exceptions: the core maps them, through the
backend's :meth:`Backend.error_kind`, to chatstate's typed errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Generic, Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

__all__ = [
    "KEEP",
    "Backend",
    "BackendCensus",
    "Describing",
    "EditOutcome",
    "Editing",
    "ErrorKind",
    "Fenced",
    "Page",
    "Popped",
    "RawSession",
    "Written",
]

E = TypeVar("E")


class Keep(Enum):
    """The type of :data:`KEEP`."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP
"""``replace(meta=KEEP)``: keep the session's metadata as it is (the default)."""

ErrorKind: TypeAlias = Literal["wrong_type", "unavailable", "timeout", "other"]
"""How the core reports a backend's exception: ``wrong_type`` (the session's storage holds data
that chatstate did not write: WrongTypeError), ``unavailable`` (no connection; certainly not
applied), ``timeout`` (sent, no answer: the outcome is unknown), ``other``."""


@dataclass(slots=True)
class Page(Generic[E]):
    """What a read returns: the newest entries asked for, oldest first (a new list, the reader's
    own), with the number of the first, the session's summary entry (when asked for), version,
    generation and whole length, and the number of each entry (``numbers``) where they are not
    ``first_seq``, ``first_seq + 1``, ... (None: they are).

    With ``meta=True`` (a :class:`Describing` backend), the session's metadata entry (None: it
    has none) and its creation and last history write, in Unix seconds (0.0: not known).

    An unknown or expired session reads as ``Page([], 0)``.
    """

    entries: list[E]
    first_seq: int
    summary: E | None = None
    version: int = 0
    generation: int = 0
    length: int = 0
    numbers: list[int] | None = None
    meta: E | None = None
    created: float = 0.0
    updated: float = 0.0

    def seqs(self) -> list[int]:
        """The number of each entry, oldest first."""
        if self.numbers is not None:
            return self.numbers
        return list(range(self.first_seq, self.first_seq + len(self.entries)))


@dataclass(slots=True)
class Written:
    """What a write returns: the session's length after it, its new version, whether the bound
    trimmed anything, and whether it was applied now (False: its write id was seen before, and
    the length and version are the session's now)."""

    length: int
    version: int
    trimmed: bool = False
    applied: bool = True


@dataclass(slots=True)
class Popped(Generic[E]):
    """What a pop returns: the entries it removed, oldest first, and the session's length and
    version after it (0 and 0: the pop emptied it, or there was none); ``applied`` False for a
    write id seen before (``entries`` then hold what its first run removed, if the backend still
    knows, else nothing)."""

    entries: list[E]
    length: int
    version: int
    applied: bool = True


EditOutcome: TypeAlias = Literal["missing", "stale"]
"""Why an :meth:`Editing.edit` changed nothing: no entry has the number (``missing``; also when
there is no session), or the session's version is no longer the one the edit was conditional on
(``stale``)."""


class Fenced(Exception):
    """Raised by a backend for a write whose ``fence`` no longer holds the session's lease:
    nothing was written."""


@dataclass(frozen=True, slots=True)
class RawSession(Generic[E]):
    """A whole session as stored: its entries, oldest first, the summary entry, the seconds it
    has left (None: no expiry), each entry's number (None: a backend that does not say;
    the built-in ones do), and its metadata entry (a :class:`Describing` backend's; None: none)."""

    entries: list[E] = field(default_factory=list)
    summary: E | None = None
    ttl: float | None = None
    numbers: list[int] | None = None
    meta: E | None = None


@dataclass(frozen=True, slots=True)
class BackendCensus:
    """What a backend knows of its contents, for metrics: every figure may be an estimate, as
    the backend's docs say."""

    sessions: int
    messages: int
    storage_bytes: int
    expirations: int = 0
    evictions: int = 0


class Backend(Protocol[E]):
    """Storage of entries by session, with sequence numbers, bounds, expiry, summaries, versions
    and leases. Implement this, give it to :class:`~chatstate.stores.StoreCore`, and the store has
    every capability of a built-in one (and can prove it with the conformance suite).

    ``ttl`` is seconds (None: no expiry); ``max_entries`` a positive int or None (no bound).
    """

    name: str
    """A short name for logs and errors (``"memory"``, ``"redis"``...)."""

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool,
    ) -> Page[E]:
        """The newest ``limit`` entries (all if None; none if 0, for the numbers alone), the
        summary entry if ``summary``; with ``touch``, the session's expiry is set to ``touch``
        seconds from now in the same step (a sliding expiry). Without ``numbers``, the page's
        version, generation and length may be left 0 (a plain load needs none of them)."""
        ...

    async def append(
        self,
        session_id: str,
        entries: Sequence[E],
        *,
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
    ) -> Written:
        """Add ``entries`` (at least one) after the last, keep the newest ``max_entries``, and set
        the expiry (of the list and of its summary) to ``ttl`` from now, atomically. A session
        that does not exist (or has expired) is created. (See the module for ``write_id`` and
        ``fence``.)"""
        ...

    async def replace(
        self,
        session_id: str,
        entries: Sequence[E],
        *,
        summary: E | None,
        ttl: float | None,
        overwrite: bool,
        write_id: str,
        fence: str | None,
        numbers: Sequence[int] | None = None,
    ) -> Written | None:
        """Make ``entries`` (at least one) and ``summary`` the whole session, expiring ``ttl`` from
        now, numbered on after the highest number the session ever gave (a new session: from its
        start). If the session exists and not ``overwrite``, change nothing and return None
        (unless ``write_id`` is remembered: its own earlier run made the session).

        With ``numbers`` (one per entry, strictly increasing, each >= 0; the core checks them),
        the entries take exactly those numbers: a restore, an import or a fork that keeps the
        message ids of what it copies. The session's next number is then the larger of
        ``numbers[-1] + 1`` and (for a session that existed) the next number it had."""
        ...

    async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool:
        """Remove the session (entries, summary, numbers; not the write ids); whether it
        existed."""
        ...

    async def compact(
        self, session_id: str, *, generation: int, before_seq: int, summary: E, write_id: str
    ) -> bool:
        """If the session's generation is still ``generation``: remove its entries numbered below
        ``before_seq`` (those a trim left), store ``summary`` with the list's expiry, and change
        the generation and version. Otherwise change nothing. Returns whether it changed."""
        ...

    async def snapshot(self, session_id: str) -> RawSession[E] | None:
        """The whole session in one read; None if it does not exist."""
        ...

    async def time_left(self, session_id: str) -> float | Literal[False] | None:
        """Seconds until the session expires: None if it never does, False if it does not
        exist."""
        ...

    async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
        """Take the session's lease for ``token`` for ``ttl`` seconds if nobody holds it (or its
        holder's time ran out); whether it was taken."""
        ...

    async def renew_lease(self, session_id: str, token: str, ttl: float) -> bool:
        """Extend the lease to ``ttl`` from now if ``token`` still holds it; whether it does."""
        ...

    async def release_lease(self, session_id: str, token: str) -> bool:
        """Give the lease up if ``token`` holds it; whether it did."""
        ...

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record that ``conversation_id`` of the user was active at ``now`` (Unix seconds) and
        lives ``ttl`` more seconds (None: for ever)."""
        ...

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        """The user's live members, most recent first (ties: the member, descending):
        ``(member, last active)`` pairs, skipping ``offset``; with ``after``, only those after
        that ``(last active, member)`` in this order (the core then passes ``offset=0``)."""
        ...

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget the user's index; the conversation ids it held."""
        ...

    def session_ids(self) -> AsyncIterator[str]:
        """Every live session's id, in no particular order, without loading the whole set."""
        ...

    async def census(self) -> BackendCensus:
        """Sessions, messages and bytes stored now (estimates allowed), for metrics."""
        ...

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        """How to report ``exc`` (None: not this backend's error, let it through)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and files. Idempotent."""
        ...


class Editing(Protocol[E]):
    """What a backend offers for the history operations of a store (message ids, pages of
    history, edits and removals by id): the built-in backends have it. Both are one atomic step
    (one script, one transaction) and, on a networked backend, one round trip."""

    async def read_range(
        self,
        session_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        touch: float | None,
    ) -> Page[E]:
        """Up to ``limit`` (at least 1) entries, oldest first, with their numbers: the newest of
        those numbered below ``before``, or the oldest of those numbered above ``after`` (at most
        one of the two is given; neither: the newest of the session). The page has the session's
        version, generation and length (and no summary). ``touch`` as for :meth:`Backend.read`.
        An unknown session reads as ``Page([], 0)``; a session with no entry in the range as a
        page without entries, with its version (its ``first_seq`` then means nothing)."""
        ...

    async def edit(
        self,
        session_id: str,
        seq: int,
        entry: E | None,
        *,
        truncate: bool,
        version: int | None,
        write_id: str,
        fence: str | None,
    ) -> Written | EditOutcome:
        """Replace the entry numbered ``seq`` with ``entry`` (None: remove it) and, with
        ``truncate``, remove every entry numbered after it, atomically; nothing else changes
        (no other entry is renumbered, the freed numbers stay unused, the expiry and the summary
        stay). The version goes up by one and the generation changes. An edit that leaves the
        session without entries deletes it (its write ids stay, as after a delete) and returns
        ``Written(0, 0)``.

        With ``version``, the edit applies only if the session's version is still ``version``,
        else it returns ``"stale"``; it returns ``"missing"`` if no entry has the number (or
        there is no session), in both cases changing nothing. Write ids and the fence as for
        every write: a remembered ``write_id`` returns ``Written(length, version,
        applied=False)`` with the session as it is now, whatever the other arguments say. The
        checks go in this order: the write id, the fence (raises), no session (``"missing"``),
        the version (``"stale"``), no such entry (``"missing"``)."""
        ...


E_contra = TypeVar("E_contra", contravariant=True)


@runtime_checkable
class Describing(Protocol[E_contra]):
    """A backend that keeps each session's metadata and its created and updated times (see the
    module): the built-in backends do. Its ``read``, ``append`` and ``replace`` take ``meta``,
    and its snapshots carry the metadata."""

    async def write_meta(
        self, session_id: str, meta: E_contra | None, *, write_id: str, fence: str | None
    ) -> Written | None:
        """Make ``meta`` the session's metadata (None: remove it), atomically, keeping its
        history, version, generation, times and expiry; None (and nothing written) if there is
        no session. A remembered ``write_id`` changes nothing and returns ``Written(length,
        version, applied=False)``; the fence as for every write (checked after the write id)."""
        ...
