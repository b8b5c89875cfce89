"""Write identities and lease fences: what makes every write of a store safe to retry.

Every write (an append, save, delete, restore, compaction) carries a *write id*. The caller may
give one (``write_id=``: any text of 1 to 128 printable characters, such as a UUID or the id of
the turn); otherwise the store makes one. Backends see it as a *token* of exactly
:data:`TOKEN_LENGTH` lowercase hex digits, 64 bits (an id already in that form is its own token,
any other is hashed to one), and remember the tokens of a session's last
:data:`WRITE_IDS_KEPT` writes in the session's own storage, expiring with it (and, after a delete,
for :data:`DELETED_IDS_TTL` seconds). A write whose token is remembered is not applied again: the
backend reports it as done. So a retry, the store's own or the caller's with the failed call's
``write_id``, never stores a turn twice and never undoes a write that came after its first run.

A lease *fences* the writes made under it: while a task holds ``store.lease(session_id)``, every
write of that session from that task (and the tasks it starts) carries the lease's token, and the
backend refuses it, in the same atomic step, if the token no longer holds the lease.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from chatstate.errors import InvalidInputError

__all__ = [
    "DELETED_IDS_TTL",
    "TOKEN_LENGTH",
    "WRITE_IDS_KEPT",
    "check_write_id",
    "fence_for",
    "fenced",
    "new_write_id",
    "remember",
    "seen",
]

TOKEN_LENGTH = 16
"""Hex digits of a write id as backends see it (8 bytes: the Redis backend stores the bytes)."""

WRITE_IDS_KEPT = 32
"""Write ids a backend remembers per session: a retry is recognised while fewer than this many
other writes of the session came between its first run and it."""

DELETED_IDS_TTL = 600.0
"""Seconds a deleted session's write ids are kept, so that a retried delete (or a retried write
before it) is still recognised after the session is gone."""

MAX_WRITE_ID_LENGTH = 128

_TOKEN = re.compile(r"[0-9a-f]{16}")

# Made ids: a random number of this process (24 bits), then a counter of its writes from a random
# start (40 bits: a trillion writes before it wraps), so no two writes share an id in practice.
_PROCESS = secrets.randbits(24) << 40
_COUNTER = itertools.count(secrets.randbits(39))
_COUNTED = (1 << 40) - 1


def new_write_id() -> str:
    """A fresh write id (a token already): unique across processes, cheap to make."""
    return f"{_PROCESS | next(_COUNTER) & _COUNTED:016x}"


def check_write_id(write_id: object) -> str:
    """The backend's token for a caller's ``write_id``; InvalidInputError if it is not one."""
    if type(write_id) is str and len(write_id) == TOKEN_LENGTH and _TOKEN.fullmatch(write_id):
        return write_id
    if not isinstance(write_id, str):
        raise InvalidInputError(f"write_id must be a str, got {type(write_id).__name__}")
    if not 0 < len(write_id) <= MAX_WRITE_ID_LENGTH or not write_id.isprintable():
        raise InvalidInputError(
            f"write_id must be 1 to {MAX_WRITE_ID_LENGTH} printable characters, got {write_id!r}"
        )
    return hashlib.blake2b(write_id.encode(), digest_size=8).hexdigest()


# -- the remembered ids, as backends that run Python keep them (the Redis scripts do the same) --
#
# A string of tokens, each followed by a newline: "tokenA\ntokenB\n", oldest first. Every token
# has the same length and none holds a newline, so a match of "token\n" is always a whole one.


def seen(ids: str, token: str) -> bool:
    """Whether ``token`` is among the remembered ``ids``."""
    return bool(ids) and f"{token}\n" in ids


def remember(ids: str, token: str) -> str:
    """``ids`` with ``token`` added, the oldest dropped beyond :data:`WRITE_IDS_KEPT`."""
    ids = f"{ids}{token}\n"
    if len(ids) > WRITE_IDS_KEPT * (TOKEN_LENGTH + 1):
        ids = ids[TOKEN_LENGTH + 1 :]
    return ids


# -- lease fences -----------------------------------------------------------------------------

_Held = dict[tuple[int, str], str]
_FENCES: ContextVar[_Held | None] = ContextVar("chatstate_fences", default=None)
"""The leases the running task holds: (store id, session id) -> the lease's token."""


def fence_for(store: object, session_id: str) -> str | None:
    """The token of the lease on ``session_id`` of ``store`` that the running task holds."""
    held = _FENCES.get()
    return None if held is None else held.get((id(store), session_id))


@contextmanager
def fenced(store: object, session_id: str, token: str) -> Iterator[None]:
    """Within the block, writes of ``session_id`` through ``store`` carry ``token``."""
    held = _FENCES.get()
    key = (id(store), session_id)
    reset = _FENCES.set({**(held or {}), key: token})
    try:
        yield
    finally:
        try:
            _FENCES.reset(reset)
        except ValueError:  # left in another context than the one it was entered in
            now = dict(_FENCES.get() or {})
            now.pop(key, None)
            _FENCES.set(now)
