"""What a redis-py exception means to the store core: the one place redis-py errors are read."""

from __future__ import annotations

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatstate.stores._backend import ErrorKind
from chatstate.stores.redis._transport import CommandNotSent

__all__ = ["REDIS_ERRORS", "error_kind"]

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
"""What redis-py raises: RedisError, and for cluster troubles (no node for a slot, too many
redirections) RedisClusterException, which is not a RedisError."""

# Failed before the command was sent: no connection (or a full pool that does not wait), or
# credentials refused when connecting.
_NEVER_SENT = (CommandNotSent, MaxConnectionsError, AuthenticationError, AuthorizationError)


def error_kind(exc: Exception) -> ErrorKind | None:
    """How the core reports ``exc`` (see :data:`~chatstate.stores.ErrorKind`):

    - ``wrong_type``: a WRONGTYPE reply: the session's key holds data of another type (every
      script reads or pushes before it writes, so it was left unchanged);
    - ``unavailable``: the command certainly never reached the server (no connection could be
      had, the pool was full, or the server refused the credentials): nothing was applied;
    - ``timeout``: the command was sent and no reply came (a timeout, or a connection lost
      after sending): it may or may not have been applied;
    - ``other``: any other error of redis-py (an error reply, a cluster without a node for the
      slot...); None for an exception that is not redis-py's.
    """
    if isinstance(exc, _NEVER_SENT):
        return "unavailable"
    if isinstance(exc, RedisTimeoutError | RedisConnectionError):
        return "timeout"
    if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
        return "wrong_type"
    if isinstance(exc, REDIS_ERRORS):
        return "other"
    return None
