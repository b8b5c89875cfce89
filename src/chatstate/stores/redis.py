"""The Redis store: history shared by every instance of an app, bounded and expiring on the server.

Layout: one Redis list per session at ``{prefix}:{<session id>}:messages``, one versioned entry per
message, oldest first, and beside it, once a summary folded its oldest messages, the summary's entry
at ``...:summary`` (same TTL). The braces are a hash tag, so every key of a session lives in one
cluster slot; the id is escaped inside them (``%`` → ``%25``, ``{`` → ``%7B``, ``}`` → ``%7D``) so
no id can end the tag early or reach another session's keys.

Every operation is ONE round trip: ``load`` is an LRANGE of the newest entries (a script that also
refreshes the expiry, with ``sliding_ttl``); ``append`` and ``save`` are one Lua script each, which
Redis runs atomically, so no client ever sees a list over its bound, without its TTL, or holding
half a turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from chatstate._checks import (
    check_count,
    check_limit,
    check_max_messages,
    check_on_corrupt,
    check_session_id,
    check_ttl,
    redact_url,
)
from chatstate._compression import Compression
from chatstate.errors import (
    ConfigurationError,
    StateLoadError,
    StateSaveError,
    StoreError,
    WrongTypeError,
)
from chatstate.messages import Message, as_messages
from chatstate.metrics import Recorder, StateMetrics, clock
from chatstate.retry import RetryPolicy
from chatstate.stores._autopipeline import AutoPipeline
from chatstate.stores._codec import DEFAULT_COMPRESS_OVER, DEFAULT_MAX_MESSAGE_BYTES, EntryCodec
from chatstate.stores._redis_lease import RELEASE, RENEW, RedisLease
from chatstate.stores.base import (
    TTL,
    Fold,
    SessionSnapshot,
    StateStore,
    check_snapshot,
    run_fold,
)

try:
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
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

_KEYS_KEPT = 65_536
"""Sessions whose key the store keeps at hand (then it starts afresh)."""

_GLOB = str.maketrans({char: "\\" + char for char in "*?[]\\"})
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


# Lua's unpack() has a stack limit of a few thousand values: push in chunks. ARGV[3..last] are the
# entries.
def _push(last: str, first: int = 3) -> str:
    return f"""
local n = 0
for i = {first}, {last}, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, {last})))
end
return n
"""


# KEYS[2], the session's summary (if it has one), lives and dies with the list.
_EXPIRE = """
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
"""
# With versions: KEYS[3] numbers the session's writes, from a random seed (ARGV[#ARGV]) where it
# does not exist yet, so a session deleted and written again never repeats a number a cache saw.
_BUMP = """
local version
if redis.call('EXISTS', KEYS[3]) == 1 then
  version = redis.call('INCR', KEYS[3])
else
  version = tonumber(ARGV[#ARGV])
  redis.call('SET', KEYS[3], version)
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) else redis.call('PERSIST', KEYS[3]) end
"""


def _append(versioned: bool) -> str:
    # KEYS[1]: the list; KEYS[2]: the summary; ARGV[1]: keep the newest N (0: all); ARGV[2]: ttl
    # in ms (0: none); ARGV[3..]: entries. RPUSH is the first write and fails on a key of another
    # type, so that leaves it as it was. Returns the length before the trim, so the caller knows
    # whether it trimmed (and, with versions, the new version).
    return f"""
local function push() {_push("#ARGV - 1" if versioned else "#ARGV")} end
local n = push()
local keep = tonumber(ARGV[1])
if keep > 0 and n > keep then
  redis.call('LTRIM', KEYS[1], -keep, -1)
end
{_EXPIRE}
{_BUMP + "return {n, version}" if versioned else "return n"}
"""


def _save(versioned: bool, restore: bool = False) -> str:
    # KEYS as for the append; ARGV[2]: ttl in ms (0: none); ARGV[3..]: entries (none: delete).
    # To restore: ARGV[1] '1' to overwrite an existing session ('0': return -1 and write nothing),
    # ARGV[3]: the summary ('': none), ARGV[4..]: entries.
    first = 4 if restore else 3
    refuse = "if ARGV[1] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end"
    summary = "if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end"
    return f"""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the key holds a ' .. kind)
end
{refuse if restore else ""}
redis.call('DEL', unpack(KEYS))
if #ARGV < {first + versioned} then return 0 end
local function push() {_push("#ARGV - 1" if versioned else "#ARGV", first)} end
local n = push()
{summary if restore else ""}
{_EXPIRE}
{_BUMP + "return version" if versioned else "return n"}
"""


def _load(summary: bool) -> str:
    # KEYS[1]: the list; KEYS[2]: the summary; ARGV[1]: first index to read; ARGV[2]: ttl in ms
    # to refresh both to (0: leave them). Returns the entries (and the summary, or nil).
    found = "{entries, #entries > 0 and redis.call('GET', KEYS[2]) or false}"
    return f"""
local entries = redis.call('LRANGE', KEYS[1], ARGV[1], -1)
if #entries > 0 and ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {found if summary else "entries"}
"""


# Fold the oldest entries into the summary, if the session is still the one read: its summary
# unchanged, and its list the entries read less some trimmed from the head (by turns appending
# meanwhile), plus any appended. The entries folded that are still there are removed.
# KEYS[1]: the list; KEYS[2]: the summary (KEYS[3]: the version); ARGV[1]: how many entries are
# folded; ARGV[2]: the summary read ('' if none); ARGV[3]: the new summary; ARGV[4..]: every entry
# read (then, with versions, a version seed).
def _compact(versioned: bool) -> str:
    return f"""
local folded = tonumber(ARGV[1])
local read = #ARGV - {4 if versioned else 3}
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
local current = redis.call('LRANGE', KEYS[1], 0, read - 1)
for trimmed = 0, read - 1 do
  local same = #current >= read - trimmed
  local i = 1
  while same and i <= read - trimmed do
    same = current[i] == ARGV[3 + trimmed + i]
    i = i + 1
  end
  if same then
    if folded > trimmed then redis.call('LTRIM', KEYS[1], folded - trimmed, -1) end
    redis.call('SET', KEYS[2], ARGV[3])
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
    {_BUMP if versioned else ""}
    return 1
  end
end
return 0
"""


# KEYS[1]: the list; KEYS[2]: the summary. The whole session and its time left (ms; -1: none).
_SNAPSHOT = """
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
if #entries == 0 then return false end
return {entries, redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[1])}
"""


# KEYS[1]: the list; KEYS[2]: its version; ARGV[1]: first index to read.
_LOAD_VERSIONED = """
return {redis.call('LRANGE', KEYS[1], ARGV[1], -1), redis.call('GET', KEYS[2]) or 0}
"""


# The conversations of a user: KEYS[1] scores each conversation id by its last activity, KEYS[2]
# by its deadline (ms; "inf": none). Both live in the user's slot, and expire with the last
# deadline, so the index never outlives its conversations; entries past their deadline are
# removed whenever the index is touched or read.
_PRUNE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
"""
# ARGV[1]: now (ms); ARGV[2]: the conversation id; ARGV[3]: its deadline (ms, or "inf").
_INDEX_CONVERSATION = f"""
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
{_PRUNE}
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
for _, key in ipairs(KEYS) do
  if last == 'inf' then redis.call('PERSIST', key)
  else redis.call('PEXPIREAT', key, math.ceil(tonumber(last))) end
end
"""
# ARGV[1]: now (ms); ARGV[2]: offset; ARGV[3]: limit.
_LIST_CONVERSATIONS = f"""
{_PRUNE}
local first = tonumber(ARGV[2])
return redis.call('ZREVRANGE', KEYS[1], first, first + tonumber(ARGV[3]) - 1, 'WITHSCORES')
"""
_DROP_CONVERSATIONS = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
redis.call('DEL', unpack(KEYS))
return ids
"""


Execute: TypeAlias = Callable[..., Awaitable[Any]]
"""Runs one Redis command: ``await execute("LRANGE", key, 0, -1)``."""


class _Script:
    """A Lua script run by EVALSHA: one round trip, falling back to EVAL (which also caches it on
    the server) when the server does not know it yet, after a restart or on a new cluster node."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(
        self, execute: Execute, keys: Sequence[str], *args: Any, repeatable: bool = False
    ) -> Any:
        try:
            return await execute(
                "EVALSHA", self.sha, len(keys), *keys, *args, repeatable=repeatable
            )
        except NoScriptError:
            return await execute(
                "EVAL", self.source, len(keys), *keys, *args, repeatable=repeatable
            )


_APPEND_SCRIPT = _Script(_append(versioned=False))
_SAVE_SCRIPT = _Script(_save(versioned=False))
_APPEND_VERSIONED_SCRIPT = _Script(_append(versioned=True))
_SAVE_VERSIONED_SCRIPT = _Script(_save(versioned=True))
_RESTORE_SCRIPT = _Script(_save(versioned=False, restore=True))
_RESTORE_VERSIONED_SCRIPT = _Script(_save(versioned=True, restore=True))
_SNAPSHOT_SCRIPT = _Script(_SNAPSHOT)
_LOAD_VERSIONED_SCRIPT = _Script(_LOAD_VERSIONED)
_INDEX_CONVERSATION_SCRIPT = _Script(_INDEX_CONVERSATION)
_LIST_CONVERSATIONS_SCRIPT = _Script(_LIST_CONVERSATIONS)
_DROP_CONVERSATIONS_SCRIPT = _Script(_DROP_CONVERSATIONS)
_LOAD_AND_TOUCH_SCRIPT = _Script(_load(summary=False))
_LOAD_WITH_SUMMARY_SCRIPT = _Script(_load(summary=True))
_COMPACT_SCRIPT = _Script(_compact(versioned=False))
_COMPACT_VERSIONED_SCRIPT = _Script(_compact(versioned=True))
_RENEW_SCRIPT = _Script(RENEW)
_RELEASE_SCRIPT = _Script(RELEASE)


DEFAULT_RETRY = RetryPolicy()
"""Three tries, backoff from 50 ms (see :class:`~chatstate.RetryPolicy`)."""

DEFAULT_SOCKET_TIMEOUT = 5.0
"""Seconds :meth:`RedisStateStore.from_url` gives a command's reply (a pipelined exchange's
replies) before the call fails with a timeout."""

DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds :meth:`RedisStateStore.from_url` gives a new connection: a server that is down fails
calls this fast (times the tries of the retry policy)."""

DEFAULT_MAX_CONNECTIONS = 50
"""The pool size of a standalone client made by :meth:`RedisStateStore.from_url`."""


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
    - ``compress_over`` (default 1024): compress entries whose JSON is longer than this many
      bytes, when that makes them smaller; ``None`` never compresses. Every entry records how it
      was written, so compressed and plain entries load together whatever the setting.
    - ``compression``: ``"auto"`` (the default): zstd, which the ``redis`` extra installs (about
      twice as fast as zlib to write, as small on chat text), else zlib from the standard
      library; or ``"zstd"`` or ``"zlib"`` by name. Reading zstd entries needs the zstandard
      package: give every instance sharing the store the ``redis`` extra (or pin ``"zlib"``).
    - ``owns_client``: close the client in :meth:`aclose` (what :meth:`from_url` sets).
    - ``auto_pipeline`` (on by default): the commands of concurrent calls go out together, in one
      pipelined write per event-loop iteration, each still atomic on its own; a call with nothing
      to share its write with goes out at once. ``max_batch`` commands per write at most,
      ``max_in_flight`` writes (and so connections) at once, ``max_pending`` queued commands
      before callers wait for room. Off, every call is a command of its own on the client.

    - ``retry``: a :class:`~chatstate.RetryPolicy` (default: 3 tries). Loads, saves, deletes and
      other calls that are safe to repeat are retried after a lost connection or a timeout; an
      append (not idempotent) only when its command never left the client, so no retry applies a
      turn twice. ``None``: no retries. Give a client of your own ``retry=Retry(NoBackoff(), 0)``
      (as :meth:`from_url` does) or redis-py may repeat an append on its own when
      ``auto_pipeline`` is off or on a cluster.
    - ``versioned``: number each session's writes in a key beside it (``...:version``), which
      :class:`~chatstate.stores.cached.CachedStore` checks to know cheaply whether its copy is
      current. Every instance that writes the sessions must have it on.
    - ``max_message_bytes``: a message whose JSON is longer (default 1 MiB) is refused with
      InvalidMessageError before anything of its call is stored; None: no limit.
    - ``message_cache_bytes``: the messages of recently written and read entries are kept,
      keyed by the entry's exact bytes, so a load decodes only the entries it has not seen (about
      two a turn) instead of its whole window; this bounds the cache's estimated memory (default
      32 MiB, about 22,000 messages of 200 bytes; 0 turns it off). It never serves stale history:
      every load still reads the entries from Redis.

    Connections: with auto-pipelining the store uses at most ``max_in_flight`` connections of the
    client's pool, whatever the number of concurrent sessions, and keeps them until
    :meth:`aclose`; 1,000 concurrent sessions neither exhaust the pool nor queue for it.

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
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        compression: Compression = "auto",
        owns_client: bool = False,
        auto_pipeline: bool = True,
        max_batch: int = 128,
        max_in_flight: int = 4,
        max_pending: int = 16_384,
        message_cache_bytes: int = 32 << 20,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        census_keys: int = 10_000,
        versioned: bool = False,
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
        self.client = client
        self.prefix = prefix
        self._keys: dict[str, str] = {}
        # A SCAN pattern of every session's history key (the prefix's glob characters escaped).
        self._sessions_pattern = f"{prefix.translate(_GLOB)}:{{*}}:messages"
        self._sliding_ms = _ms(check_ttl(sliding_ttl, name="sliding_ttl"))
        self._on_corrupt = check_on_corrupt(on_corrupt)
        self._codec = EntryCodec.for_store(
            compress_over=compress_over,
            compression=compression,
            message_cache_bytes=message_cache_bytes,
            max_message_bytes=max_message_bytes,
        )
        self._owns_client = owns_client
        self._closed = False
        self._cold_cluster = isinstance(client, RedisCluster)
        self._pipeline = AutoPipeline(
            client,
            enabled=_check_flag(auto_pipeline, name="auto_pipeline"),
            max_batch=check_count(max_batch, name="max_batch"),
            max_in_flight=check_count(max_in_flight, name="max_in_flight"),
            max_pending=check_count(max_pending, name="max_pending"),
        )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy or None, got {retry!r}")
        self.retry = retry if retry is not None else RetryPolicy(attempts=1)
        # What may be repeated (loads, saves, deletes) is retried after any connection error or
        # timeout; the rest (appends, leases) only when the command never left the client.
        self._pipeline.retry = self.retry
        self._execute: Execute = self._pipeline.execute
        self.versioned = _check_flag(versioned, name="versioned")
        self._recorder = Recorder()
        self._census = _Census(self, census_keys)
        self.corrupt_entries = 0
        """Entries skipped because they could not be decoded."""

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisStateStore:
        """A store on a client made from ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``;
        ``redis://user:password@host:port/db`` for ACL users), closed by :meth:`aclose`.

        ``options`` that the constructor takes (``prefix``, ``sliding_ttl``, ``auto_pipeline``,
        ...) go to the store, the rest to the client (``socket_timeout``, ``retry``,
        ``ssl_ca_certs``, ``max_connections``, ...). ``cluster=True`` makes a ``RedisCluster``
        from the URL of any node. A standalone client gets a ``BlockingConnectionPool`` of
        ``max_connections`` (default 50): a call that finds every connection busy waits for one
        (up to ``timeout``, default 20 s) instead of failing with "too many connections".
        """
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                "url must start with redis://, rediss:// or unix://, got "
                f"{redact_url(url) if isinstance(url, str) else type(url).__name__}"
            )
        store_options = {name: options.pop(name) for name in _STORE_OPTIONS & options.keys()}
        if options.get("decode_responses"):
            raise ConfigurationError("RedisStateStore stores bytes: decode_responses must be off")
        options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        # The store retries by its own RetryPolicy, which knows what is safe to repeat; redis-py's
        # own retry would repeat an append whose reply was lost.
        options.setdefault("retry", Retry(NoBackoff(), 0))
        try:
            client: RedisClient
            if cluster:
                client = RedisCluster.from_url(url, **options)
            else:
                options.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
                pool = BlockingConnectionPool.from_url(url, **options)
                # No I/O: a misspelt option fails here, not at the first connect.
                pool.make_connection()  # type: ignore[no-untyped-call]
                client = Redis.from_pool(pool)
        except (ValueError, TypeError, *_REDIS_ERRORS) as exc:
            raise ConfigurationError(f"invalid Redis URL {redact_url(url)}: {exc}") from exc
        return cls(client, **store_options, owns_client=True)

    def __repr__(self) -> str:
        kind = "cluster" if isinstance(self.client, RedisCluster) else "redis"
        return f"RedisStateStore({kind}, prefix={self.prefix!r})"

    def key(self, session_id: str, kind: str = "messages") -> str:
        """The Redis key of a session's history (or of its ``lease``, ``version``, ...)."""
        if kind == "messages" and type(session_id) is str:
            # Every call names a session: a checked, escaped key is kept for the next one.
            key = self._keys.get(session_id)
            if key is not None:
                return key
        key = f"{self.prefix}:{{{check_session_id(session_id).translate(_ESCAPES)}}}:{kind}"
        if kind == "messages":
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            self._keys[session_id] = key
        return key

    def lease(self, session_id: str, *, ttl: float, timeout: float) -> RedisLease:
        """Hold the session's turn lease across every instance sharing this Redis (see
        :class:`~chatstate.stores.base.SessionLeases`): ``async with store.lease(id, ttl=30,
        timeout=10):``. Used by ``StateMiddlewareConfig(lease_ttl=...)``."""
        return RedisLease(
            self._execute,
            self.key(session_id, "lease"),
            session_id,
            ttl=check_ttl(ttl, name="ttl") or 0,
            timeout=max(0.0, float(timeout)),
            renew=_RENEW_SCRIPT,
            release=_RELEASE_SCRIPT,
        )

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        raw, _ = await self._read(session_id, limit, summary=False, touch_ms=self._sliding_ms)
        return self._decode(raw, session_id)

    async def _read(
        self, session_id: str, limit: int | None, *, summary: bool, touch_ms: int
    ) -> tuple[list[bytes], bytes | None]:
        """The newest ``limit`` entries of a session (and its summary's entry, with
        ``summary``), in one round trip; the expiry refreshed to ``touch_ms`` if not 0."""
        key = self.key(session_id)
        limit = check_limit(limit)
        if limit == 0:
            return [], None
        start = 0 if limit is None else -limit
        started = clock()
        try:
            if self._cold_cluster:
                await self._warm_up()
            found = None
            if summary:
                raw, found = await _LOAD_WITH_SUMMARY_SCRIPT.run(
                    self._execute, (key, _summary(key)), start, touch_ms, repeatable=True
                )
            elif touch_ms:
                raw = await _LOAD_AND_TOUCH_SCRIPT.run(
                    self._execute, (key, _summary(key)), start, touch_ms, repeatable=True
                )
            else:
                raw = await self._execute("LRANGE", key, start, -1, repeatable=True)
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateLoadError, "loading") from exc
        self._recorder.load_window.append(clock() - started)
        return raw, found

    def _decode(self, raw: Sequence[bytes], session_id: str) -> list[Message]:
        """A load's entries as messages; corrupt ones skipped (logged, counted) or raised."""
        self._recorder.loads += 1
        messages, skipped = self._codec.decode(
            raw, on_corrupt=self._on_corrupt, session_id=session_id
        )
        if skipped:
            self.corrupt_entries += skipped
            logger.warning("skipped %d corrupt entries of session %r", skipped, session_id)
        return messages

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        new = as_messages(messages)
        await self._write_whole(session_id, new, check_ttl(ttl), None, None)

    async def _write_whole(
        self,
        session_id: str,
        messages: list[Message],
        ttl: float | None,
        summary: Message | None,
        overwrite: bool | None,
    ) -> bool:
        """Replace the whole session in one script: a save (``overwrite`` None), or a restore
        (with its summary) that, unless ``overwrite``, leaves an existing session alone and
        returns False."""
        key = self.key(session_id)
        entries = self._codec.encode(messages)
        keys: tuple[str, ...] = (key, _summary(key))
        if overwrite is None:
            script, args = _SAVE_SCRIPT, [0, _ms(ttl), *entries]
        else:
            packed = self._codec.encode([summary])[0] if summary is not None else b""
            script, args = _RESTORE_SCRIPT, [int(overwrite), _ms(ttl), packed, *entries]
        if self.versioned:
            keys = (*keys, self.key(session_id, "version"))
            script = _SAVE_VERSIONED_SCRIPT if overwrite is None else _RESTORE_VERSIONED_SCRIPT
            args.append(_seed())
        started = clock()
        try:
            if self._cold_cluster:
                await self._warm_up()
            done = await script.run(self._execute, keys, *args, repeatable=True)
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateSaveError, "saving", messages) from exc
        self._recorder.saves += 1
        self._recorder.save_window.append(clock() - started)
        return bool(done != -1)

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The whole session, its summary and its time left, in one atomic script (see
        :class:`~chatstate.stores.base.SessionTransfer`); None if there is none."""
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            found = await _SNAPSHOT_SCRIPT.run(self._execute, (key, _summary(key)), repeatable=True)
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateLoadError, "loading") from exc
        if not found:
            return None
        raw, summary, ttl_ms = found
        # A damaged entry raises: a copy (an export, a fork) must not lose it silently.
        both = [*raw, summary] if summary else raw
        decoded, _ = self._codec.decode(both, on_corrupt="raise", session_id=session_id)
        messages = decoded[: len(raw)]
        return SessionSnapshot(
            messages,
            decoded[-1] if summary else None,
            max(ttl_ms, 1) / 1000 if ttl_ms >= 0 else None,  # -1: no expiry
        )

    async def restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        """Write a whole session in one atomic script; an existing one only with ``overwrite``
        (see :class:`~chatstate.stores.base.SessionTransfer`)."""
        messages, summary, ttl = check_snapshot(snapshot)
        return await self._write_whole(session_id, messages, ttl, summary, bool(overwrite))

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        return (await self._append(session_id, messages, max_messages, ttl, versioned=False))[0]

    async def append_versioned(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> tuple[int, int]:
        """:meth:`append`, and the session's version after it (see ``versioned``)."""
        self._require_versions()
        return await self._append(session_id, messages, max_messages, ttl, versioned=True)

    async def _append(
        self,
        session_id: str,
        messages: Sequence[Message],
        max_messages: int | None,
        ttl: TTL,
        *,
        versioned: bool,
    ) -> tuple[int, int]:
        key = self.key(session_id)
        new = as_messages(messages)
        keep = check_max_messages(max_messages) or 0
        ms = _ms(check_ttl(ttl))
        version = 0
        try:
            if self._cold_cluster:
                await self._warm_up()
            if not new:
                if versioned:
                    return int(
                        await self._execute("LLEN", key, repeatable=True)
                    ), await self.version(session_id)
                return int(await self._execute("LLEN", key, repeatable=True)), 0
            entries = self._codec.encode(new)
            started = clock()
            if self.versioned:
                keys = (key, _summary(key), self.key(session_id, "version"))
                reply = await _APPEND_VERSIONED_SCRIPT.run(
                    self._execute, keys, keep, ms, *entries, _seed()
                )
                length, version = int(reply[0]), int(reply[1])
            else:
                length = int(
                    await _APPEND_SCRIPT.run(
                        self._execute, (key, _summary(key)), keep, ms, *entries
                    )
                )
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateSaveError, "appending to", new) from exc
        recorder = self._recorder
        recorder.appends += 1
        recorder.save_window.append(clock() - started)
        if keep and length > keep:
            recorder.trims += 1
            length = keep
        return length, version

    async def load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]:
        """:meth:`load`, and the session's version when it was read, in one round trip."""
        self._require_versions()
        key = self.key(session_id)
        limit = check_limit(limit)
        keys = (key, self.key(session_id, "version"))
        try:
            if self._cold_cluster:
                await self._warm_up()
            raw, version = await _LOAD_VERSIONED_SCRIPT.run(
                self._execute, keys, 0 if limit is None else -limit, repeatable=True
            )
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StateLoadError, "loading") from exc
        return self._decode([] if limit == 0 else raw, session_id), int(version)

    async def load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """:meth:`load`, and the session's summary, in one round trip (see
        :class:`~chatstate.stores.base.SessionSummaries`)."""
        raw, summary = await self._read(session_id, limit, summary=True, touch_ms=self._sliding_ms)
        return self._decode(raw, session_id), self._decode_summary(summary, session_id)

    def _decode_summary(self, raw: bytes | None, session_id: str) -> Message | None:
        if raw is None:
            return None
        decoded = self._decode([raw], session_id)  # corrupt: skipped (and counted) or raised
        return decoded[0] if decoded else None

    async def compact(self, session_id: str, fold: Fold) -> bool:
        """Fold the oldest messages into the session's summary (see
        :class:`~chatstate.stores.base.SessionSummaries`): one round trip to read, and one
        script that changes the session only if it still holds what was read."""
        raw, summary = await self._read(session_id, None, summary=True, touch_ms=0)
        if not raw:
            return False
        # A damaged entry raises rather than being skipped: the count the fold returns must
        # name the same entries in Redis as in the history it was given.
        history, _ = self._codec.decode(raw, on_corrupt="raise", session_id=session_id)
        result = await run_fold(fold, history, self._decode_summary(summary, session_id))
        if result is None:
            return False
        count, new_summary = result
        (entry,) = self._codec.encode([new_summary])
        key = self.key(session_id)
        keys: tuple[str, ...] = (key, _summary(key))
        args = [count, summary or b"", entry, *raw]
        script = _COMPACT_SCRIPT
        if self.versioned:
            keys, script = (*keys, self.key(session_id, "version")), _COMPACT_VERSIONED_SCRIPT
            args.append(_seed())
        try:
            done = await script.run(self._execute, keys, *args)
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "compacting") from exc
        return bool(done)

    async def version(self, session_id: str) -> int:
        """The session's version: a number that changes with every write (0: no session)."""
        self._require_versions()
        key = self.key(session_id, "version")
        try:
            if self._cold_cluster:
                await self._warm_up()
            return int(await self._execute("GET", key, repeatable=True) or 0)
        except _REDIS_ERRORS as exc:
            raise self._translate(
                exc, session_id, StateLoadError, "checking the version of"
            ) from exc

    def _require_versions(self) -> None:
        if not self.versioned:
            raise ConfigurationError(
                "this RedisStateStore keeps no versions: make it with versioned=True"
            )

    async def delete(self, session_id: str) -> bool:
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            keys = [key, _summary(key)]
            if self.versioned:
                keys.append(self.key(session_id, "version"))
            existed = bool(await self._execute("DEL", *keys, repeatable=True))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "deleting") from exc
        self._recorder.deletes += 1
        return existed

    async def exists(self, session_id: str) -> bool:
        """Whether the session has any history."""
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            return bool(await self._execute("EXISTS", key, repeatable=True))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "checking") from exc

    async def ttl(self, session_id: str) -> timedelta | None:
        """The time the session has left; None if it never expires or does not exist."""
        key = self.key(session_id)
        try:
            if self._cold_cluster:
                await self._warm_up()
            ms = int(await self._execute("PTTL", key, repeatable=True))
        except _REDIS_ERRORS as exc:
            raise self._translate(exc, session_id, StoreError, "reading the TTL of") from exc
        return timedelta(milliseconds=ms) if ms >= 0 else None

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record a conversation of a user (see :class:`~chatstate.sessions.Conversations`): one
        script on the user's slot."""
        deadline = "inf" if ttl is None else str(round((now + ttl) * 1000))
        await self._conversation_script(
            _INDEX_CONVERSATION_SCRIPT, user_session, round(now * 1000), conversation_id, deadline
        )

    async def list_conversations(
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        """A user's live conversations, most recent first (see ``Conversations.list``)."""
        reply = await self._conversation_script(
            _LIST_CONVERSATIONS_SCRIPT, user_session, round(now * 1000), offset, limit
        )
        return [
            (reply[index].decode(), float(reply[index + 1]) / 1000)
            for index in range(0, len(reply), 2)
        ]

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget a user's index; returns the conversation ids it held."""
        ids = await self._conversation_script(_DROP_CONVERSATIONS_SCRIPT, user_session)
        return [conversation_id.decode() for conversation_id in ids]

    async def _conversation_script(self, script: _Script, user_session: str, *args: Any) -> Any:
        keys = (self.key(user_session, "conversations"), self.key(user_session, "deadlines"))
        try:
            if self._cold_cluster:
                await self._warm_up()
            return await script.run(self._execute, keys, *args, repeatable=True)
        except _REDIS_ERRORS as exc:
            raise self._translate(
                exc, user_session, StoreError, "indexing the conversations of"
            ) from exc

    async def session_ids(self) -> AsyncIterator[str]:
        """The ids of every session in the store, by SCAN (never KEYS), in no order."""
        try:
            async for key in self.client.scan_iter(match=self._sessions_pattern, count=1000):
                text = key.decode()
                yield _unescape(text[len(self.prefix) + 2 : -len("}:messages")])
        except _REDIS_ERRORS as exc:
            raise StoreError(f"listing the sessions failed: {type(exc).__name__}: {exc}") from exc

    async def metrics(self) -> StateMetrics:
        """This store's :class:`~chatstate.metrics.StateMetrics`.

        Calls, errors, trims and latencies are this instance's (this process's client).
        ``active_sessions``, ``avg_history_size`` and ``storage_used`` are every instance's, from a
        census that never scans the keyspace in one go: each call moves a SCAN of this store's
        keys on by up to ``census_keys`` keys (10,000) and reports the last completed pass (below
        that many sessions, every call completes one: exact up to the writes made during it).
        Sessions are counted exactly; history sizes and ``MEMORY USAGE`` are sampled, one key in
        eight (``storage_used`` is their mean times the count). ``expirations`` and ``evictions``
        are the server's own counters (``INFO stats``, the whole server, every node of a cluster).
        """
        try:
            if self._cold_cluster:
                await self._warm_up()
            census = await self._census.advance()
            expired, evicted = await self._server_counters()
        except _REDIS_ERRORS as exc:
            raise StoreError(f"reading the metrics failed: {type(exc).__name__}: {exc}") from exc
        return self._recorder.metrics(
            active_sessions=census.sessions,
            messages=round(census.sessions * census.mean_length),
            storage_used=round(census.sessions * census.mean_bytes),
            expirations=expired,
            evictions=evicted,
        )

    async def _server_counters(self) -> tuple[int, int]:
        if isinstance(self.client, RedisCluster):
            by_node = await self.client.info("stats", target_nodes=RedisCluster.PRIMARIES)
            stats = list(by_node.values())
        else:
            stats = [await self.client.info("stats")]
        return (
            sum(int(node.get("expired_keys", 0)) for node in stats),
            sum(int(node.get("evicted_keys", 0)) for node in stats),
        )

    async def aclose(self) -> None:
        """Close the client if the store made it (:meth:`from_url`); a given client is yours."""
        if self._closed:
            return
        self._closed = True
        await self._pipeline.aclose()
        if self._owns_client:
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
        self._recorder.errors += 1
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


_STORE_OPTIONS = frozenset(inspect.signature(RedisStateStore.__init__).parameters) - {
    "self",
    "client",
    "owns_client",
}


def _summary(key: str) -> str:
    """The key of the summary of the session whose history is at ``key``."""
    return key[: -len("messages")] + "summary"


def _unescape(escaped: str) -> str:
    return escaped.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def _seed() -> int:
    """The first version of a session: random, so that no number repeats after a delete."""
    return secrets.randbits(48)


def _check_flag(value: object, *, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses", False))


@dataclass(frozen=True, slots=True)
class _CensusResult:
    sessions: int = 0
    mean_length: float = 0.0
    mean_bytes: float = 0.0


class _Census:
    """Counts a store's sessions by SCAN, a bounded number of keys at a time, sampling the
    length and the memory of one key in eight."""

    SAMPLE_EVERY = 8

    def __init__(self, store: RedisStateStore, keys_per_call: int) -> None:
        self._store = store
        self._keys_per_call = check_count(keys_per_call, name="census_keys")
        self._scan: AsyncIterator[bytes] | None = None
        self._seen = 0
        self._samples: list[tuple[int, int]] = []
        self.last = _CensusResult()

    async def advance(self) -> _CensusResult:
        """Scan on; return the last completed pass (the first pass, before it completes, counts
        what it has seen)."""
        if self._scan is None:
            self._scan = self._store.client.scan_iter(
                match=self._store._sessions_pattern, count=1000
            )
            self._seen, self._samples = 0, []
        sample: list[bytes] = []
        finished = True
        async for key in self._scan:
            if self._seen % self.SAMPLE_EVERY == 0:
                sample.append(key)
            self._seen += 1
            if self._seen % self._keys_per_call == 0:
                finished = False
                break
        execute = self._store._execute
        replies = await asyncio.gather(
            *(execute("LLEN", key, repeatable=True) for key in sample),
            *(execute("MEMORY", "USAGE", key, "SAMPLES", "0", repeatable=True) for key in sample),
        )
        lengths, sizes = replies[: len(sample)], replies[len(sample) :]
        self._samples += [
            (int(length), int(size or 0))
            for length, size in zip(lengths, sizes, strict=True)
            if length
        ]
        if finished:
            self._scan = None
        if finished or self.last.sessions == 0:
            count = len(self._samples)
            self.last = _CensusResult(
                sessions=self._seen,
                mean_length=sum(length for length, _ in self._samples) / count if count else 0.0,
                mean_bytes=sum(size for _, size in self._samples) / count if count else 0.0,
            )
        return self.last
