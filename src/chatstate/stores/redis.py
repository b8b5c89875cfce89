"""The Redis store: history shared by every instance of an app, bounded and expiring on the server.

Layout: one Redis list per session at ``{prefix}:{<session id>}:messages``, one versioned entry per
message, oldest first. The braces are a hash tag, so every key of a session lives in one cluster
slot; the id is escaped inside them (``%`` → ``%25``, ``{`` → ``%7B``, ``}`` → ``%7D``) so no id
can end the tag early or reach another session's keys.

Every operation is ONE round trip: ``load`` is an LRANGE of the newest entries (a script that also
refreshes the expiry, with ``sliding_ttl``); ``append`` and ``save`` are one Lua script each, which
Redis runs atomically, so no client ever sees a list over its bound, without its TTL, or holding
half a turn.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from chatstate._checks import check_limit, check_max_messages, check_session_id, check_ttl
from chatstate.errors import (
    ConfigurationError,
    StateLoadError,
    StateSaveError,
    StoreError,
    WrongTypeError,
)
from chatstate.messages import Message, as_messages, decode_entries, encode_entry
from chatstate.stores._redis_lease import RELEASE, RENEW, RedisLease
from chatstate.stores.base import TTL, StateStore

try:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("RedisStateStore needs redis-py: pip install 'chatstate[redis]'") from exc

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = ["RedisStateStore"]

logger = logging.getLogger("chatstate.redis")

# What redis-py raises: RedisError, and for cluster troubles (no node for a slot, too many
# redirections) RedisClusterException, which is not a RedisError.
_REDIS_ERRORS = (RedisError, RedisClusterException)

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})

# Lua's unpack() has a stack limit of a few thousand values: push in chunks.
_PUSH = """
local n = 0
for i = 3, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return n
"""
_EXPIRE = """
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
"""
# KEYS[1]: the list; ARGV[1]: keep the newest N (0: all); ARGV[2]: ttl in ms (0: none); ARGV[3..]:
# entries. RPUSH is the first write and fails on a key of another type, so that leaves it as it was.
_APPEND = f"""
local function push() {_PUSH} end
local n = push()
local keep = tonumber(ARGV[1])
if keep > 0 and n > keep then
  redis.call('LTRIM', KEYS[1], -keep, -1)
  n = keep
end
{_EXPIRE}
return n
"""
_SAVE = f"""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the key holds a ' .. kind)
end
redis.call('DEL', KEYS[1])
if #ARGV < 3 then return 0 end
local function push() {_PUSH} end
local n = push()
{_EXPIRE}
return n
"""
# KEYS[1]: the list; ARGV[1]: first index to read; ARGV[2]: ttl in ms.
_LOAD_AND_TOUCH = """
local entries = redis.call('LRANGE', KEYS[1], ARGV[1], -1)
if #entries > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return entries
"""


class _Script:
    """A Lua script run by EVALSHA: one round trip, falling back to EVAL (which also caches it on
    the server) when the server does not know it yet, after a restart or on a new cluster node."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: RedisClient, key: str, *args: Any) -> Any:
        try:
            return await client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return await client.eval(self.source, 1, key, *args)


_APPEND_SCRIPT = _Script(_APPEND)
_SAVE_SCRIPT = _Script(_SAVE)
_LOAD_AND_TOUCH_SCRIPT = _Script(_LOAD_AND_TOUCH)
_RENEW_SCRIPT = _Script(RENEW)
_RELEASE_SCRIPT = _Script(RELEASE)


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, round(seconds * 1000))


class RedisStateStore(StateStore):
    """History in Redis (standalone or Cluster), shared by every instance of an app.

    ``RedisStateStore(client)`` uses a ``redis.asyncio.Redis`` or ``RedisCluster`` client that you
    own (and close); :meth:`from_url` makes one that the store owns and closes in :meth:`aclose`.
    The client must not use ``decode_responses=True``. One client, and so one connection pool,
    serves every session.

    - ``prefix``: the first part of every key (default ``"chatstate"``).
    - ``sliding_ttl``: refresh a session's expiry to this on every load, in the load's round trip.
    - ``on_corrupt``: an entry that cannot be decoded is ``"skip"``-ped (logged and counted in
      ``corrupt_entries``; the rest of the history loads) or ``"raise"``-s CorruptEntryError.
    - ``compress_over``: zlib-compress entries whose JSON is longer than this many bytes.
    - ``owns_client``: close the client in :meth:`aclose` (what :meth:`from_url` sets).

    A cluster client is initialised (its slot map read) before the first command, so that a
    burst of first commands does not misroute.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "chatstate",
        sliding_ttl: TTL = None,
        on_corrupt: Literal["skip", "raise"] = "skip",
        compress_over: int | None = None,
        owns_client: bool = False,
    ) -> None:
        if not isinstance(client, Redis | RedisCluster):
            raise ConfigurationError(
                "client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, "
                f"got {type(client).__name__}"
            )
        if _decodes_responses(client):
            raise ConfigurationError(
                "the Redis client decodes responses to str (decode_responses=True); "
                "RedisStateStore stores bytes: give it a client without decode_responses"
            )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"prefix must be a non-empty str without braces, got {prefix!r}"
            )
        if on_corrupt not in ("skip", "raise"):
            raise ConfigurationError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        if compress_over is not None and (type(compress_over) is not int or compress_over < 0):
            raise ConfigurationError(
                f"compress_over must be an int >= 0 or None, got {compress_over!r}"
            )
        self.client = client
        self.prefix = prefix
        self._sliding_ms = _ms(check_ttl(sliding_ttl, name="sliding_ttl"))
        self._on_corrupt: Literal["skip", "raise"] = on_corrupt
        self._compress_over = compress_over
        self._owns_client = owns_client
        self._closed = False
        self._cold_cluster = isinstance(client, RedisCluster)
        self.corrupt_entries = 0
        """Entries skipped because they could not be decoded."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "chatstate",
        sliding_ttl: TTL = None,
        on_corrupt: Literal["skip", "raise"] = "skip",
        compress_over: int | None = None,
        **client_options: Any,
    ) -> RedisStateStore:
        """A store on a client made from ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``;
        ``redis://user:password@host:port/db`` for ACL users), closed by :meth:`aclose`.

        ``cluster=True`` makes a ``RedisCluster`` client from the URL of any node.
        ``client_options`` go to the client (``socket_timeout``, ``max_connections``, ...).
        """
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                "url must start with redis://, rediss:// or unix://, got "
                f"{_redact(url) if isinstance(url, str) else type(url).__name__}"
            )
        if client_options.get("decode_responses"):
            raise ConfigurationError("RedisStateStore stores bytes: decode_responses must be off")
        try:
            client: RedisClient = (
                RedisCluster.from_url(url, **client_options)
                if cluster
                else Redis.from_url(url, **client_options)
            )
        except (ValueError, *_REDIS_ERRORS) as exc:
            raise ConfigurationError(f"invalid Redis URL {_redact(url)}: {exc}") from exc
        return cls(
            client,
            prefix=prefix,
            sliding_ttl=sliding_ttl,
            on_corrupt=on_corrupt,
            compress_over=compress_over,
            owns_client=True,
        )

    def __repr__(self) -> str:
        kind = "cluster" if isinstance(self.client, RedisCluster) else "redis"
        return f"RedisStateStore({kind}, prefix={self.prefix!r})"

    def key(self, session_id: str, kind: str = "messages") -> str:
        """The Redis key of a session's history (or of its ``lease``)."""
        return f"{self.prefix}:{{{check_session_id(session_id).translate(_ESCAPES)}}}:{kind}"

    def lease(self, session_id: str, *, ttl: float, timeout: float) -> RedisLease:
        """Hold the session's turn lease across every instance sharing this Redis (see
        :class:`~chatstate.stores.base.SessionLeases`): ``async with store.lease(id, ttl=30,
        timeout=10):``. Used by ``StateMiddlewareConfig(lease_ttl=...)``."""
        return RedisLease(
            self.client,
            self.key(session_id, "lease"),
            session_id,
            ttl=check_ttl(ttl, name="ttl") or 0,
            timeout=max(0.0, float(timeout)),
            renew=_RENEW_SCRIPT,
            release=_RELEASE_SCRIPT,
        )

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        key = self.key(session_id)
        limit = check_limit(limit)
        if limit == 0:
            return []
        start = 0 if limit is None else -limit
        try:
            if self._cold_cluster:
                await self._warm_up()
            if self._sliding_ms:
                raw = await _LOAD_AND_TOUCH_SCRIPT(self.client, key, start, self._sliding_ms)
            else:
                raw = await self.client.lrange(key, start, -1)
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateLoadError, "loading") from exc
        messages, skipped = decode_entries(raw, on_corrupt=self._on_corrupt, session_id=session_id)
        if skipped:
            self.corrupt_entries += skipped
            logger.warning("skipped %d corrupt entries of session %r", skipped, session_id)
        return messages

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        key = self.key(session_id)
        new = as_messages(messages)
        ms = _ms(check_ttl(ttl))
        entries = [encode_entry(message, compress_over=self._compress_over) for message in new]
        try:
            if self._cold_cluster:
                await self._warm_up()
            await _SAVE_SCRIPT(self.client, key, 0, ms, *entries)
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateSaveError, "saving", new) from exc

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        key = self.key(session_id)
        new = as_messages(messages)
        keep = check_max_messages(max_messages) or 0
        ms = _ms(check_ttl(ttl))
        try:
            if self._cold_cluster:
                await self._warm_up()
            if not new:
                return int(await self.client.llen(key))
            entries = [encode_entry(message, compress_over=self._compress_over) for message in new]
            return int(await _APPEND_SCRIPT(self.client, key, keep, ms, *entries))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateSaveError, "appending to", new) from exc

    async def delete(self, session_id: str) -> bool:
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            return bool(await self.client.delete(key))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "deleting") from exc

    async def exists(self, session_id: str) -> bool:
        """Whether the session has any history."""
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            return bool(await self.client.exists(key))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "checking") from exc

    async def ttl(self, session_id: str) -> timedelta | None:
        """The time the session has left; None if it never expires or does not exist."""
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            ms = int(await self.client.pttl(key))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "reading the TTL of") from exc
        return timedelta(milliseconds=ms) if ms >= 0 else None

    async def aclose(self) -> None:
        """Close the client if the store made it (:meth:`from_url`); a given client is yours."""
        if self._owns_client and not self._closed:
            self._closed = True
            await self.client.aclose()

    async def _warm_up(self) -> None:
        await self.client.initialize()
        self._cold_cluster = False

    def _translate(
        self,
        exc: Exception,
        session_id: str,
        kind: type[StoreError],
        doing: str,
        messages: Sequence[Message] = (),
    ) -> StoreError:
        if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
            return WrongTypeError(
                f"the Redis key of session {session_id!r} holds data that is not a chatstate "
                f"history (a key of another type); it was left unchanged",
                session_id=session_id,
            )
        text = f"{doing} session {session_id!r} failed: {type(exc).__name__}: {exc}"
        if kind is StateSaveError:
            return StateSaveError(text, session_id=session_id, messages=messages)
        return kind(text, session_id=session_id)


def _decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses", False))


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"
