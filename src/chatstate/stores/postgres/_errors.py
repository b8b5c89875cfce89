"""What an asyncpg exception means to the store core: the one place asyncpg errors are read."""

from __future__ import annotations

import asyncpg

from chatstate.stores._backend import ErrorKind
from chatstate.stores.postgres._batch import BatchAbandoned

__all__ = ["FENCED", "NotSent", "error_kind"]

FENCED = "CSFEN"
"""The SQLSTATE the store's functions raise for a write whose fence no longer holds the lease
(the transaction rolled back)."""

# The server ended the connection (a shutdown, a crash): a statement under way may or may not have
# committed before it went.
_ENDED = frozenset({"57P01", "57P02"})


class NotSent(Exception):
    """No connection could be had (the server refused or did not answer, the pool stayed full):
    the call was never sent, so nothing of it was applied."""


def error_kind(exc: Exception) -> ErrorKind | None:
    """How the core reports ``exc`` (see :data:`~chatstate.stores.ErrorKind`):

    - ``unavailable``: the call certainly never reached the server (no connection could be had,
      the server refused connections or credentials): nothing was applied;
    - ``timeout``: the call was sent and no answer came: the client's timeout ran out, or the
      connection was lost or ended by the server during it, or the batch it was sent in was
      abandoned (it may or may not have committed);
    - ``other``: any other error of asyncpg or the server (a statement cancelled by
      ``statement_timeout``, a lock timeout, a deadlock: the transaction was rolled back);
      None for an exception that is not asyncpg's.
    """
    if isinstance(exc, NotSent):
        return "unavailable"
    if isinstance(
        exc, TimeoutError | asyncpg.ConnectionDoesNotExistError | ConnectionError | BatchAbandoned
    ):
        return "timeout"
    if isinstance(exc, asyncpg.PostgresError):
        return "timeout" if exc.sqlstate in _ENDED else "other"
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError):
        return "other"
    return None
