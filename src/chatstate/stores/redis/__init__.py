"""The Redis store (the ``redis`` extra): history shared by every instance of an app, bounded and
expiring on the server, one round trip per call, on a standalone server or a cluster.

:class:`RedisStateStore` is the store core over :class:`RedisBackend`, which keeps each session
in one cluster slot (see :mod:`chatstate.stores.redis._backend` for the keys) and runs every
write as one Lua script (``lua/*.lua``); :class:`AutoPipeline` coalesces the commands of
concurrent callers into pipelined writes.
"""

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("RedisStateStore needs redis-py: pip install 'chatstate[redis]'") from exc

from chatstate.stores.redis._autopipeline import AutoPipeline, CommandNotSent
from chatstate.stores.redis._backend import RedisBackend
from chatstate.stores.redis._errors import error_kind
from chatstate.stores.redis._store import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DURABILITY_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RETRY,
    DEFAULT_SOCKET_TIMEOUT,
    RedisStateStore,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DURABILITY_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RETRY",
    "DEFAULT_SOCKET_TIMEOUT",
    "AutoPipeline",
    "CommandNotSent",
    "RedisBackend",
    "RedisStateStore",
    "error_kind",
]
