"""The Redis backend: a session's entries, summary, numbers and metadata in one cluster slot.

Layout, for a session id escaped into a hash tag (``%`` → ``%25``, ``{`` → ``%7B``, ``}`` →
``%7D``, so no id can end the tag early or reach another session's keys)::

    {prefix}:{<id>}:messages   list    the entries, oldest first
    {prefix}:{<id>}:summary    string  the summary's entry, once a fold made one
    {prefix}:{<id>}:meta       hash    tail (the number the next entry takes), gen, ver,
                                       s (1: a summary exists), h (the gaps in the numbers,
                                       if any), m (1: metadata exists), c and u (created and
                                       updated: the writer's clock, Unix seconds with six
                                       decimals), w1-w4 and wn (the last 32 write ids, 8 bytes
                                       each, a ring); after a delete only the ids and x
                                       (whether it existed), for 10 minutes
    {prefix}:{<id>}:gaps       string  the gaps, when too long for the meta hash (h is "*")
    {prefix}:{<id>}:metadata   string  the session's metadata entry, if it has one (up to
                                       64 KiB: not in the meta hash, which it would convert)
    {prefix}:{<id>}:lease      string  the turn lease's holder
    {prefix}:{<id>}:popped     string  what the session's last pop removed (for a retry of it),
                                       for 10 minutes
    {prefix}:{<id>}:version    string  read and removed: the version of a 0.1.0 versioned store

No number is given twice in a session's life: trims and folds remove entries from the head,
pops and edits from anywhere, and none renumbers. The numbers removed above the head are gaps
(:mod:`._numbering`), and the head's number is ``tail - LLEN - (their total)``: without gaps
(``h`` absent, nearly every session) ``tail - LLEN``. The meta hash stays small enough for
Redis's compact encoding of a hash (listpack: every value at most 64 bytes); gaps that would
not fit go to the ``gaps`` key. The summary, the meta hash, the gaps and the metadata expire
with the list (a sliding ``touch`` too), and go with it. A replace given numbers (a restore
that keeps message ids) writes their gaps the same way. ``c`` is set when a write creates the
session, ``u`` by every write of its history (append, replace, pop, edit), not by a fold or a
metadata write; both come from the writing instance's clock (an argument of the script, as
the other backends take theirs: a TIME in the append script cost a tenth of its instructions).

A list without a meta hash was written by 0.1.0: it reads as numbered from 0, in generation 0,
at the version of its old ``:version`` key (1 if it has none), and its first write gives it a
meta hash (and removes that key). A meta hash without ``m``, ``c`` or ``u`` (a session written
before they were kept) reads as no metadata and times not known (0.0); no upgrade is needed:
the session's next history write sets ``u``, and ``c`` stays unknown.

Every call is one command, and so one round trip: the plain load is a bare ``LRANGE``; every
other call is one Lua script (``lua/*.lua``), which Redis runs atomically.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Literal

from redis.exceptions import NoScriptError

from chatstate._checks import check_session_id
from chatstate.stores._backend import (
    KEEP,
    BackendCensus,
    Describing,
    Editing,
    EditOutcome,
    ErrorKind,
    Fenced,
    Keep,
    Page,
    Popped,
    RawSession,
    Written,
)
from chatstate.stores.redis import _conversations as conversations
from chatstate.stores.redis import _edits as edits
from chatstate.stores.redis import _scripts as lua
from chatstate.stores.redis._autopipeline import AutoPipeline
from chatstate.stores.redis._census import Census
from chatstate.stores.redis._durability import DurableWrites
from chatstate.stores.redis._edits import now_text
from chatstate.stores.redis._errors import error_kind
from chatstate.stores.redis._numbering import number_page, numbers_of, replace_args

__all__ = ["RedisBackend"]

_KEYS_KEPT = 65_536
"""Sessions whose keys the backend keeps at hand (then it starts afresh)."""

_GLOB = str.maketrans({char: "\\" + char for char in "*?[]\\"})
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})
_SUFFIX = "}:messages"


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, round(seconds * 1000))


def _seed() -> int:
    """The generation and version of a new session: random (never 0, the numbers of a 0.1.0
    session), so a session deleted and written again never repeats a number a reader saw.
    Unpredictability is not needed, only that instances and sessions differ."""
    return random.getrandbits(48) + 1


class RedisBackend:
    """The :class:`~chatstate.stores.Backend` of :class:`~chatstate.stores.redis.RedisStateStore`:
    every command goes through ``pipeline`` (an :class:`AutoPipeline` on a redis-py client), and
    every key starts with ``prefix``. See the module for the layout. With ``durable``, the
    writes (append, replace, delete, pop, edit, compact) go through it instead, each followed
    by a WAIT (see :mod:`chatstate.stores.redis._durability`). It has the methods of
    :class:`~chatstate.stores.Editing` too."""

    name = "redis"

    def __init__(
        self,
        pipeline: AutoPipeline,
        *,
        prefix: str,
        census_keys: int = 10_000,
        durable: DurableWrites | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.prefix = prefix
        self.durable = durable
        self._execute = pipeline.execute
        self._write = pipeline.execute if durable is None else durable.execute
        self._keys: dict[str, tuple[str, str, str, str, str, str, str]] = {}
        self._append_heads: dict[str, tuple[str | int, ...]] = {}
        # A SCAN pattern of every session's list (the prefix's glob characters escaped).
        self._sessions_pattern = f"{prefix.translate(_GLOB)}:{{*{_SUFFIX}"
        self._census = Census(pipeline, self._sessions_pattern, census_keys)

    def __repr__(self) -> str:
        return f"RedisBackend(prefix={self.prefix!r})"

    def key(self, session_id: str, kind: str = "messages") -> str:
        """The key of a session's ``messages``, ``summary``, ``meta``, ``lease``... (the id is
        checked)."""
        return f"{self.prefix}:{{{check_session_id(session_id).translate(_ESCAPES)}}}:{kind}"

    def _session_keys(self, session_id: str) -> tuple[str, str, str, str, str, str, str]:
        """The list, summary, meta, 0.1.0 version, gaps, metadata and lease keys of a (checked)
        session id: the order of the scripts' KEYS (a read takes the first six)."""
        keys = self._keys.get(session_id)
        if keys is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            base = f"{self.prefix}:{{{session_id.translate(_ESCAPES)}}}:"
            keys = self._keys[session_id] = (
                base + "messages",
                base + "summary",
                base + "meta",
                base + "version",
                base + "gaps",
                base + "metadata",
                base + "lease",
            )
        return keys

    def _append_head(self, session_id: str) -> tuple[str | int, ...]:
        """The append script's command on a session's keys, but for its arguments."""
        if len(self._append_heads) >= _KEYS_KEPT:
            self._append_heads.clear()
        head = lua.APPEND.head(self._session_keys(session_id))
        self._append_heads[session_id] = head
        return head

    # -- entries ---------------------------------------------------------------------------------

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool,
        meta: bool = False,
    ) -> Page[bytes]:
        keys = self._keys.get(session_id) or self._session_keys(session_id)
        if not (numbers or summary or touch or meta):
            # The hottest path of all: one LRANGE, nothing else.
            if limit == 0:
                return Page([], 0)
            start = -limit if limit else 0
            raw = await self._execute("LRANGE", keys[0], start, -1, repeatable=True)
            return Page(raw, 0)
        first: int | str = "" if limit == 0 else -limit if limit else 0
        reply = await lua.READ.run(
            self._execute,
            keys[:6],
            first,
            _ms(touch),
            int(summary),
            int(numbers),
            int(meta),
            repeatable=True,
        )
        if not reply:
            return Page([], 0)
        entries, kept, tail, generation, version, length, gaps = reply[:7]
        page = Page(entries, tail - len(entries), kept or None, version, generation, length)
        if gaps and entries:
            number_page(page, tail, gaps, length - len(entries))
        if meta:  # the times as text (Unix seconds), or None: not known
            page.meta, created, updated = reply[7], reply[8], reply[9]
            page.created, page.updated = float(created or 0), float(updated or 0)
        return page

    async def read_range(
        self,
        session_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        touch: float | None,
    ) -> Page[bytes]:
        keys = self._session_keys(session_id)[:6]
        return await edits.read_range(
            self._execute, keys, before=before, after=after, limit=limit, touch_ms=_ms(touch)
        )

    async def append(
        self,
        session_id: str,
        entries: Sequence[bytes],
        *,
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
        meta: bytes | None = None,
    ) -> Written:
        # The hottest write: its command built from a head kept per session, run without a layer
        # of Script.run (EVAL only if the server does not know the script).
        head = self._append_heads.get(session_id) or self._append_head(session_id)
        wid = bytes.fromhex(write_id)
        args = (
            max_entries or 0, _ms(ttl), _seed(), wid, fence or "", meta or "", now_text(),
            *entries,
        )  # fmt: skip
        # Repeatable: the write id makes a retry after a lost reply a no-op if the first landed.
        try:
            reply = await self._write(*head, *args, repeatable=True)
        except NoScriptError:
            keys = self._session_keys(session_id)
            reply = await lua.APPEND.evaluate(self._write, keys, *args, repeatable=True)
        if reply is None:
            raise _fenced(session_id)
        length, version, trimmed, applied = reply
        return Written(length, version, trimmed == 1, applied == 1)

    async def replace(
        self,
        session_id: str,
        entries: Sequence[bytes],
        *,
        summary: bytes | None,
        ttl: float | None,
        overwrite: bool,
        write_id: str,
        fence: str | None,
        numbers: Sequence[int] | None = None,
        meta: bytes | Keep | None = KEEP,
    ) -> Written | None:
        keys = self._session_keys(session_id)
        numbered = replace_args(numbers)  # the next number after them, and their gaps
        described = ("k", "") if meta is KEEP else ("d", "") if meta is None else ("s", meta)
        reply = await lua.REPLACE.run(
            self._write,
            keys,
            int(overwrite),
            _ms(ttl),
            _seed(),
            bytes.fromhex(write_id),
            fence or "",
            summary or b"",
            *numbered,
            *described,
            now_text(),
            *entries,
            repeatable=True,
        )
        if reply is None:
            raise _fenced(session_id)
        if len(reply) == 1:
            return None  # it exists, and no overwrite
        return Written(reply[0], reply[1], applied=bool(reply[2]))

    async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool:
        keys = self._session_keys(session_id)
        existed = await lua.DELETE.run(
            self._write, keys, bytes.fromhex(write_id), fence or "", repeatable=True
        )
        if existed is None:
            raise _fenced(session_id)
        return bool(existed)

    async def pop(
        self, session_id: str, count: int, *, write_id: str, fence: str | None
    ) -> Popped[bytes]:
        keys = (*self._session_keys(session_id), self.key(session_id, "popped"))
        popped = await edits.pop(self._write, keys, count, _seed(), write_id=write_id, fence=fence)
        if popped is None:
            raise _fenced(session_id)
        return popped

    async def edit(
        self,
        session_id: str,
        seq: int,
        entry: bytes | None,
        *,
        truncate: bool,
        version: int | None,
        write_id: str,
        fence: str | None,
    ) -> Written | EditOutcome:
        keys = self._session_keys(session_id)
        edited = await edits.edit(
            self._write,
            keys,
            seq,
            entry,
            truncate=truncate,
            version=version,
            write_id=write_id,
            fence=fence,
        )
        if edited is None:
            raise _fenced(session_id)
        return edited

    async def compact(
        self, session_id: str, *, generation: int, before_seq: int, summary: bytes, write_id: str
    ) -> bool:
        keys = self._session_keys(session_id)[:6]
        done = await lua.COMPACT.run(
            self._write,
            keys,
            generation,
            before_seq,
            summary,
            bytes.fromhex(write_id),
            repeatable=True,
        )
        return bool(done)

    async def snapshot(self, session_id: str) -> RawSession[bytes] | None:
        keys = self._session_keys(session_id)[:6]
        found = await lua.SNAPSHOT.run(self._execute, keys, repeatable=True)
        if not found:
            return None
        entries, summary, ms_left, tail, gaps, meta = found
        ttl = max(ms_left, 1) / 1000 if ms_left >= 0 else None  # -1: no expiry
        numbers = numbers_of(tail, len(entries), gaps or b"", 0, len(entries))
        return RawSession(entries, summary or None, ttl, numbers, meta or None)

    async def write_meta(
        self, session_id: str, meta: bytes | None, *, write_id: str, fence: str | None
    ) -> Written | None:
        keys = self._session_keys(session_id)
        written = await edits.write_meta(self._write, keys, meta, write_id=write_id, fence=fence)
        if written is False:
            raise _fenced(session_id)
        return written

    async def time_left(self, session_id: str) -> float | Literal[False] | None:
        ms = int(await self._execute("PTTL", self._session_keys(session_id)[0], repeatable=True))
        return False if ms == -2 else None if ms == -1 else ms / 1000

    # -- leases ----------------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
        # Repeatable: a token that holds the lease already keeps it.
        keys = (self.key(session_id, "lease"),)
        held = await lua.LEASE_ACQUIRE.run(self._execute, keys, token, _ms(ttl), repeatable=True)
        return bool(held)

    async def renew_lease(self, session_id: str, token: str, ttl: float) -> bool:
        keys = (self.key(session_id, "lease"),)
        held = await lua.LEASE_RENEW.run(self._execute, keys, token, _ms(ttl), repeatable=True)
        return bool(held)

    async def release_lease(self, session_id: str, token: str) -> bool:
        keys = (self.key(session_id, "lease"),)
        return bool(await lua.LEASE_RELEASE.run(self._execute, keys, token, repeatable=True))

    # -- the conversation index ------------------------------------------------------------------

    def _index_keys(self, user_session: str) -> tuple[str, str]:
        return self.key(user_session, "conversations"), self.key(user_session, "deadlines")

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        keys = self._index_keys(user_session)
        await conversations.index(self._execute, keys, conversation_id, now=now, ttl=ttl)

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        keys = self._index_keys(user_session)
        return await conversations.listing(
            self._execute, keys, now=now, offset=offset, limit=limit, after=after
        )

    async def drop_conversations(self, user_session: str) -> list[str]:
        return await conversations.drop(self._execute, self._index_keys(user_session))

    # -- the whole store -------------------------------------------------------------------------

    async def session_ids(self) -> AsyncIterator[str]:
        """By SCAN (never KEYS), in no order."""
        client = await self.pipeline.ready()
        start = len(self.prefix) + 2
        async for key in client.scan_iter(match=self._sessions_pattern, count=1000):
            yield _unescape(key.decode()[start : -len(_SUFFIX)])

    async def census(self) -> BackendCensus:
        return await self._census.count()

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        return error_kind(exc)

    async def aclose(self) -> None:
        await self.pipeline.aclose()


if TYPE_CHECKING:  # mypy proves that the store core can run the history operations on it
    _EDITING: type[Editing[bytes]] = RedisBackend
    _DESCRIBING: type[Describing[bytes]] = RedisBackend


def _fenced(session_id: str) -> Fenced:
    return Fenced(f"the lease of session {session_id!r} is not held by this write's token")


def _unescape(escaped: str) -> str:
    return escaped.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")
