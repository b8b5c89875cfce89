"""Whole sessions moved as they are: export to JSON Lines, import back, fork into a new id.

Each works on any store that can read and write a whole session at once
(:class:`~chatstate.stores.base.SessionTransfer`: every built-in store), so a session is always
copied in one atomic read and written in one atomic write, with its summary and its expiry, and
an existing session is never replaced unless asked.

The export format is one JSON object a line, one line a session::

    {"format": "chatstate.session/1", "session_id": "user-ada", "messages": [...],
     "summary": null, "expires_at": "2026-11-25T10:00:00+00:00", "ids": ["0", "1", ...]}

``messages`` holds each message as :class:`~chatstate.Message` serialises it (the same JSON as
the stores keep: ``{"role": "user", "content": "Hello"}``, defaults left out), oldest first, so a
line reads as an OpenAI-style conversation too; ``expires_at`` is when the session was due to
expire (UTC), or null; ``ids`` the messages' ids (added in 0.2; a line without them, as 0.1.0
wrote, imports with ids made afresh), which an import keeps, as a fork does: links to a message
stay good across a move from one store to another; and ``metadata``, the session's metadata
(added in 0.2, only where the session has some). From an encrypted store (``encryption=``) the
export holds the plain messages and metadata: it is meant to be kept as carefully as the keys.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from pydantic import ValidationError

from chatstate._checks import check_session_id, check_ttl
from chatstate.errors import (
    ConfigurationError,
    InvalidInputError,
    SessionExistsError,
    SessionNotFoundError,
)
from chatstate.messages import Message
from chatstate.sessions import index_fork
from chatstate.stores._metadata import check_metadata
from chatstate.stores._writes import check_write_id, new_write_id
from chatstate.stores.base import TTL, SessionSnapshot, SessionTransfer, snapshot_numbers

__all__ = [
    "EXPORT_FORMAT",
    "ImportReport",
    "export_sessions",
    "fork_session",
    "import_sessions",
]

EXPORT_FORMAT = "chatstate.session/1"
"""The ``format`` of every exported line; a line of another format is refused."""

Conflict: TypeAlias = Literal["raise", "skip", "overwrite"]
_CONFLICTS = ("raise", "skip", "overwrite")


def _transfers(store: object) -> SessionTransfer:
    if not isinstance(store, SessionTransfer):
        raise ConfigurationError(
            f"{type(store).__name__} cannot read and write whole sessions (it has no snapshot() "
            "and restore(): see chatstate.stores.SessionTransfer)"
        )
    return store


async def export_sessions(
    store: Any, session_ids: Iterable[str] | AsyncIterable[str], *, clock: Any = time.time
) -> AsyncIterator[str]:
    """One line of JSON (ending in a newline) for each of ``session_ids`` that exists, each read in
    one atomic snapshot, in the format of this module (and docs/transfer.md).

    :param store: a store that reads and writes whole sessions
        (:class:`~chatstate.stores.base.SessionTransfer`).
    :param session_ids: a list, or an async iterable: ``store.session_ids()`` (every session),
        ``await Conversations(store).session_ids(user_id)`` (a user's). Ids of sessions that do not
        exist (or have expired) are passed over.
    :param clock: the wall clock in Unix seconds that ``expires_at`` is reckoned from.
    """
    transfers = _transfers(store)
    async for session_id in _each(session_ids):
        snapshot = await transfers.snapshot(session_id)
        if snapshot is None:
            continue
        expires_at = (
            None
            if snapshot.ttl is None
            else datetime.fromtimestamp(clock() + snapshot.ttl, UTC).isoformat()
        )
        line = {
            "format": EXPORT_FORMAT,
            "session_id": session_id,
            "messages": [_dump(message) for message in snapshot.messages],
            "summary": None if snapshot.summary is None else _dump(snapshot.summary),
            "expires_at": expires_at,
        }
        if snapshot.ids is not None:
            line["ids"] = snapshot.ids
        if snapshot.metadata is not None:
            line["metadata"] = snapshot.metadata
        yield json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


@dataclass(slots=True)
class ImportReport:
    """What an import did: the ids of the sessions written, of those left alone because they
    existed (``on_conflict="skip"``), and of those not written because they had expired."""

    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


async def import_sessions(
    store: Any,
    lines: Iterable[str | bytes] | AsyncIterable[str | bytes],
    *,
    on_conflict: Conflict = "raise",
    ttl: TTL | Literal["recorded"] = "recorded",
    clock: Any = time.time,
    write_id: str | None = None,
) -> ImportReport:
    """Write the sessions of exported ``lines`` into ``store``, each in one atomic step with its
    summary. Every line is read and checked before anything is written: a bad one raises
    :class:`~chatstate.errors.InvalidInputError` naming its line number, and nothing is written.
    What can stop an import part way, and how to run it again: docs/transfer.md.

    :param store: a store that reads and writes whole sessions
        (:class:`~chatstate.stores.base.SessionTransfer`).
    :param lines: the lines of an export (``str`` or ``bytes``, or an async iterable of them);
        blank lines are passed over.
    :param on_conflict: a session that exists already ``"raise"``-s
        :class:`~chatstate.errors.SessionExistsError` (checked before anything is written), is
        ``"skip"``-ped, or is replaced (``"overwrite"``).
    :param ttl: ``"recorded"``: each session's recorded expiry (those past it are not written, and
        listed in ``expired``); or a TTL for every session (``None``: none expire).
    :param clock: the wall clock in Unix seconds that recorded expiries are compared with.
    :param write_id: names the import (by default it makes one): an import that failed part way,
        run again with the same ``write_id`` and lines, writes no session twice.
    """
    if on_conflict not in _CONFLICTS:
        raise ConfigurationError(
            f"on_conflict must be one of {', '.join(_CONFLICTS)}, got {on_conflict!r}"
        )
    override = None if ttl == "recorded" else check_ttl(ttl)
    transfers = _transfers(store)
    parsed: dict[str, tuple[SessionSnapshot, float | None]] = {}
    number = 0
    async for raw in _each(lines):
        number += 1
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"line {number} is not UTF-8: {exc.reason}") from None
        if not text.strip():
            continue
        session_id, snapshot, expires_at = _parse(text, number)
        if session_id in parsed:
            raise InvalidInputError(f"line {number}: session {session_id!r} appears twice")
        parsed[session_id] = snapshot, expires_at
    report = ImportReport()
    now = clock()
    writes: list[tuple[str, SessionSnapshot]] = []
    for session_id, (snapshot, expires_at) in parsed.items():
        if ttl != "recorded":
            writes.append((session_id, replace(snapshot, ttl=override)))
        elif expires_at is not None and expires_at <= now:
            report.expired.append(session_id)
        else:
            left = None if expires_at is None else expires_at - now
            writes.append((session_id, replace(snapshot, ttl=left)))
    # A SessionTransfer of one's own may take no write_id: its writes then carry none.
    restore: Any = transfers.restore
    takes_ids = "write_id" in inspect.signature(restore).parameters
    if write_id is not None and not takes_ids:
        raise ConfigurationError(f"{type(store).__name__}.restore() takes no write_id")
    name = new_write_id() if write_id is None else check_write_id(write_id)
    ids: dict[str, dict[str, str]] = {
        session_id: {"write_id": _session_write_id(name, session_id)} if takes_ids else {}
        for session_id, _ in writes
    }
    if on_conflict == "raise":
        for session_id, snapshot in writes:
            # A session that exists is a conflict unless this import's own earlier run wrote it
            # (a restore that finds its write id remembered reports True, and writes nothing).
            if await _exists(store, transfers, session_id) and not await restore(
                session_id, snapshot, **ids[session_id]
            ):
                raise SessionExistsError(
                    f"session {session_id!r} exists already; nothing was imported (pass "
                    "on_conflict='skip' or 'overwrite')",
                    session_id=session_id,
                )
    for session_id, snapshot in writes:
        if await restore(
            session_id, snapshot, overwrite=on_conflict == "overwrite", **ids[session_id]
        ):
            report.imported.append(session_id)
        elif on_conflict == "skip":
            report.skipped.append(session_id)
        else:
            raise SessionExistsError(
                f"session {session_id!r} was created while the import ran; the sessions "
                f"before it were imported: {report.imported!r}",
                session_id=session_id,
            )
    return report


def _session_write_id(name: str, session_id: str) -> str:
    """The write id of one session's write in an import named ``name``."""
    return hashlib.blake2b(f"{name}\0{session_id}".encode(), digest_size=8).hexdigest()


async def fork_session(
    store: Any,
    source: str,
    target: str,
    *,
    overwrite: bool = False,
    ttl: TTL | Literal["source"] = "source",
    write_id: str | None = None,
) -> SessionSnapshot:
    """Copy the session ``source`` (its history, summary, metadata and message ids) to the new
    session ``target``: read in one atomic snapshot, written in one atomic write, and from then
    on the two go on apart. A fork of a user's conversation, or into one, is registered under that
    user (docs/transfer.md). Returns what was copied; raises
    :class:`~chatstate.errors.SessionNotFoundError` if ``source`` does not exist.

    :param store: a store that reads and writes whole sessions
        (:class:`~chatstate.stores.base.SessionTransfer`).
    :param source: the session copied.
    :param target: the new session's id.
    :param overwrite: replace ``target`` whole if it exists; else it raises
        :class:`~chatstate.errors.SessionExistsError`.
    :param ttl: the fork's TTL (``None``: it never expires), or ``"source"``: the time the source
        has left.
    :param write_id: names the fork's write: a fork that failed with
        :class:`~chatstate.errors.OutcomeUnknownError`, run again with the error's ``write_id``,
        reports its own copy instead of raising SessionExistsError.
    """
    source, target = check_session_id(source), check_session_id(target)
    if source == target:
        raise InvalidInputError(f"a session cannot be forked into itself ({source!r})")
    override = None if ttl == "source" else check_ttl(ttl)
    transfers = _transfers(store)
    snapshot = await transfers.snapshot(source)
    if snapshot is None:
        raise SessionNotFoundError(
            f"session {source!r} does not exist (or has expired): nothing to fork",
            session_id=source,
        )
    if ttl != "source":
        snapshot = replace(snapshot, ttl=override)
    # Only when given: a SessionTransfer of one's own may take no write_id.
    named = {} if write_id is None else {"write_id": write_id}
    if not await transfers.restore(target, snapshot, overwrite=bool(overwrite), **named):
        raise SessionExistsError(
            f"session {target!r} exists already; nothing was written (pass overwrite=True to "
            "replace it)",
            session_id=target,
        )
    # Where a user owns it (a conversation's id, the fork's or the source's), the fork is
    # registered under that user: listed with the conversations, erased with them.
    await index_fork(store, source, target, ttl=snapshot.ttl)
    return snapshot


async def _exists(store: Any, transfers: SessionTransfer, session_id: str) -> bool:
    """Whether the session exists: by ``exists()`` where the store has it (reading nothing, and
    refreshing no sliding expiry), else by a snapshot."""
    exists = getattr(store, "exists", None)
    if exists is not None:
        return bool(await exists(session_id))
    return await transfers.snapshot(session_id) is not None


def _dump(message: Message) -> Any:
    return json.loads(message.model_dump_json(exclude_defaults=True))


def _parse(text: str, number: int) -> tuple[str, SessionSnapshot, float | None]:
    """A line's session id, snapshot (without TTL) and expiry (Unix time, or None)."""
    where = f"line {number}"
    try:
        line = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"{where} is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than Python's parser goes: no message is that deep
        raise InvalidInputError(f"{where} is JSON nested too deeply to be a session") from None
    if not isinstance(line, dict) or line.get("format") != EXPORT_FORMAT:
        found = line.get("format") if isinstance(line, dict) else type(line).__name__
        raise InvalidInputError(f"{where} is not a {EXPORT_FORMAT} line (format: {found!r})")
    try:
        session_id = check_session_id(line.get("session_id"))
    except InvalidInputError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError(f"{where}: 'messages' must be a non-empty list")
    try:
        history = [Message.model_validate(message) for message in messages]
        summary = line.get("summary")
        summary = None if summary is None else Message.model_validate(summary)
    except ValidationError as exc:
        raise InvalidInputError(
            f"{where} holds an invalid message: {exc.errors()[0]['msg']}"
        ) from None
    expires_at = line.get("expires_at")
    try:
        moment = None if expires_at is None else datetime.fromisoformat(expires_at)
    except (TypeError, ValueError):
        moment = None
        expires_at = repr(expires_at)
    if expires_at is not None and (moment is None or moment.utcoffset() is None):
        # A time without its offset would be read in this machine's zone: off by hours.
        raise InvalidInputError(
            f"{where}: 'expires_at' must be an ISO 8601 time with its UTC offset (as exports "
            f"write it, e.g. 2026-12-02T06:00:00+00:00) or null, got {expires_at}"
        )
    metadata = line.get("metadata")
    parsed = SessionSnapshot(history, summary, ids=line.get("ids"), metadata=metadata)
    try:
        snapshot_numbers(parsed)
        if metadata is not None:
            check_metadata(metadata)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    return session_id, parsed, None if moment is None else moment.timestamp()


async def _each(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
