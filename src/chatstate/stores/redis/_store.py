"""The Redis store: the store core over :class:`RedisBackend`, on a client given or made."""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from chatstate._checks import check_count, redact_url
from chatstate._compression import Compression
from chatstate.errors import ConfigurationError
from chatstate.metrics import StateMetrics
from chatstate.retry import RetryPolicy
from chatstate.stores._codec import DEFAULT_COMPRESS_OVER, DEFAULT_MAX_MESSAGE_BYTES, EntryCodec
from chatstate.stores._core import BackendStore
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook
from chatstate.stores._near_cache import NearCache
from chatstate.stores.base import TTL
from chatstate.stores.redis._autopipeline import AutoPipeline
from chatstate.stores.redis._backend import RedisBackend
from chatstate.stores.redis._durability import Durability, DurableWrites
from chatstate.stores.redis._urls import SCHEMES, Closer, make_client, store_options_in_query

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
else:
    RedisClient = Any

logger = logging.getLogger("chatstate")

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DURABILITY_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RETRY",
    "DEFAULT_SOCKET_TIMEOUT",
    "RedisStateStore",
]

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

DEFAULT_DURABILITY_TIMEOUT = 1.0
"""Seconds a write waits for its replicas with ``durability="replicas"``."""

_UNSET: Any = object()


class RedisStateStore(BackendStore[bytes]):
    """History in Redis (standalone or Cluster), shared by every instance of an app. Every call is
    one round trip, and the commands of concurrent calls share pipelined writes. asyncio only:
    under trio a call raises :class:`~chatstate.errors.ConfigurationError`. Its keys, compression,
    pipelining, connections and failures: docs/stores/redis.md.

    :param client: a ``redis.asyncio.Redis`` or ``RedisCluster`` client, not with
        ``decode_responses=True``, that you own (and close); :meth:`from_url` makes one that the
        store owns. Its one connection pool serves every session.
    :param prefix: the first part of every key.
    :param sliding_ttl: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param on_corrupt: an entry that cannot be decoded is ``"skip"``-ped (logged, counted in
        ``corrupt_entries``) or ``"raise"``-s CorruptEntryError.
    :param compress_over: compress an entry whose JSON is longer than this many bytes, when that
        makes it smaller (``None``: never).
    :param compression: ``"auto"`` (zstd where the zstandard package is installed, else zlib),
        ``"zstd"`` or ``"zlib"``. Entries record theirs, but reading zstd needs zstandard on
        every instance (the ``redis`` extra brings it).
    :param owns_client: close the client in :meth:`aclose` (what :meth:`from_url` sets).
    :param auto_pipeline: the commands of concurrent calls go out together, one pipelined write
        per event-loop iteration, each still atomic; ``False``: every command on its own.
    :param max_batch: commands per pipelined write at most.
    :param max_in_flight: pipelined writes at once, and so connections of the client's pool the
        store uses (and keeps until :meth:`aclose`).
    :param max_pending: queued commands at most; past them, callers wait for room.
    :param message_cache_bytes: bounds a cache of the messages of recent entries, so that a load
        decodes only the entries it has not seen (0: off); every load still reads Redis.
    :param retry: retries a call after a lost connection or a timeout (a write's id makes a retry
        never apply it twice); ``None``: no retries. A client of your own keeps its own too.
    :param max_message_bytes: refuse, with InvalidMessageError and nothing of the call stored, a
        message whose JSON is longer (default 1 MiB; ``None``: no limit).
    :param census_keys: keys a :meth:`metrics` call scans at most.
    :param encryption: seal every entry (:class:`~chatstate.Encryption`) before it reaches Redis.
    :param near_cache: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param hooks: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param durability: when a write is acknowledged: ``"primary"``, once the primary applied it
        (a failover can lose it); ``"replicas"``, once ``min_replicas`` replicas have it too
        (docs/durability.md).
    :param min_replicas: with ``"replicas"``: how many must have each write.
    :param durability_timeout: with ``"replicas"``: seconds a write waits for them; short of them
        it raises :class:`~chatstate.errors.OutcomeUnknownError`, which its write id makes safe to
        retry.
    :param versioned: deprecated and ignored (every session has a version).
    """

    backend: RedisBackend

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
        encryption: Encryption | None = None,
        near_cache: NearCache | None = None,
        hooks: Sequence[Hook] = (),
        durability: Durability = "primary",
        min_replicas: int = 1,
        durability_timeout: float = DEFAULT_DURABILITY_TIMEOUT,
        versioned: bool = _UNSET,
    ) -> None:
        if versioned is not _UNSET:
            warnings.warn(
                "RedisStateStore(versioned=...) is deprecated and ignored: every session has a "
                "version now",
                DeprecationWarning,
                stacklevel=2,
            )
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
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy or None, got {retry!r}")
        codec = EntryCodec.for_store(
            compress_over=compress_over,
            compression=compression,
            message_cache_bytes=message_cache_bytes,
            max_message_bytes=max_message_bytes,
            encryption=encryption,
        )
        pipeline = AutoPipeline(
            client,
            enabled=_check_flag(auto_pipeline, name="auto_pipeline"),
            max_batch=check_count(max_batch, name="max_batch"),
            max_in_flight=check_count(max_in_flight, name="max_in_flight"),
            max_pending=check_count(max_pending, name="max_pending"),
            # What may be repeated (loads, saves, deletes) is retried after any connection error
            # or timeout; the rest (appends, folds) only when the command never left the client.
            retry=retry if retry is not None else RetryPolicy(attempts=1),
        )
        durable = _durable_writes(
            pipeline, durability, min_replicas, durability_timeout, retry=pipeline.retry
        )
        super().__init__(
            RedisBackend(pipeline, prefix=prefix, census_keys=census_keys, durable=durable),
            codec=codec,
            on_corrupt=on_corrupt,
            sliding_ttl=sliding_ttl,
            near_cache=near_cache,
            hooks=hooks,
        )
        self.client = client
        self.prefix = prefix
        self.durability = durability
        self._owns_client = owns_client
        self._closers: list[Closer] = []

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisStateStore:
        """A store on a client made from ``url``, closed by :meth:`aclose`:

        - ``redis://host:port/db``, ``rediss://`` for TLS, ``unix:///path``;
          ``redis://user:password@host:port/db`` for ACL users;
        - a Redis Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``),
          ``?cluster=true`` on any of the above, or ``cluster=True``;
        - a primary watched by Sentinels:
          ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
          (``rediss+sentinel://``): the store asks the Sentinels for the primary of ``service``,
          and asks again after a failover (``sentinel_password=`` for Sentinels that need one).

        The store's options (``prefix``, ``durability``, ``min_replicas``,
        ``durability_timeout``) may also be given in the URL's query
        (``?durability=replicas``). ``options`` that the constructor takes (``prefix``,
        ``sliding_ttl``, ``auto_pipeline``, ...) go to the store, the rest to the client
        (``socket_timeout``, ``retry``, ``ssl_ca_certs``, ``max_connections``, ...). A
        standalone client gets a ``BlockingConnectionPool`` of ``max_connections`` (default
        50): a call that finds every connection busy waits for one (up to ``timeout``, default
        20 s) instead of failing with "too many connections".
        """
        if not isinstance(url, str) or not url.startswith(SCHEMES):
            raise ConfigurationError(
                "url must start with redis://, rediss://, unix://, redis+cluster:// or "
                "redis+sentinel://, got "
                f"{redact_url(url) if isinstance(url, str) else type(url).__name__}"
            )
        try:
            plain_url, query_options, in_cluster = store_options_in_query(url)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {redact_url(url)}: {exc}") from exc
        store_options = {**query_options}
        store_options.update({name: options.pop(name) for name in _STORE_OPTIONS & options.keys()})
        if options.get("decode_responses"):
            raise ConfigurationError("RedisStateStore stores bytes: decode_responses must be off")
        options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        # The store retries by its own RetryPolicy, which knows what is safe to repeat; redis-py's
        # own retry would repeat an append whose reply was lost.
        options.setdefault("retry", Retry(NoBackoff(), 0))
        if not (cluster or in_cluster) and not plain_url.startswith(("redis+", "rediss+")):
            options.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
        try:
            client, closers = make_client(plain_url, options, cluster=cluster or in_cluster)
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            raise ConfigurationError(f"invalid Redis URL {redact_url(url)}: {exc}") from exc
        store = cls(client, **store_options, owns_client=True)
        store._closers = closers
        return store

    def __repr__(self) -> str:
        kind = "cluster" if isinstance(self.client, RedisCluster) else "redis"
        return f"RedisStateStore({kind}, prefix={self.prefix!r})"

    def key(self, session_id: str, kind: str = "messages") -> str:
        """The Redis key of a session's history (or of its ``summary``, ``meta``, ``lease``)."""
        return self.backend.key(session_id, kind)

    @property
    def auto_pipeline(self) -> bool:
        """Whether concurrent calls share pipelined writes (the ``auto_pipeline`` option)."""
        return self.backend.pipeline.enabled

    @property
    def max_in_flight(self) -> int:
        """Connections of the client's pool the store uses at most, with ``auto_pipeline``."""
        return self.backend.pipeline.max_in_flight

    async def metrics(self) -> StateMetrics:
        """This store's :class:`~chatstate.metrics.StateMetrics`.

        Calls, errors, trims and latencies are this instance's (this process's client).
        ``active_sessions``, ``avg_history_size`` and ``storage_used`` are every instance's, from a
        census that never scans the keyspace in one go: each call moves a SCAN of this store's
        keys on by up to ``census_keys`` keys (10,000) and reports the last completed pass (below
        that many sessions, every call completes one: exact up to the writes made during it).
        Sessions are counted exactly; history sizes and the lists' ``MEMORY USAGE`` are sampled,
        one key in eight (``storage_used`` is their mean times the count; the summaries and
        numbers beside the lists are not counted). ``expirations`` and ``evictions`` are the
        server's own counters (``INFO stats``, the whole server, every node of a cluster).
        """
        return await super().metrics()

    async def aclose(self) -> None:
        """Wait for the calls under way, then close the client if the store made it
        (:meth:`from_url`); a given client is yours."""
        if self._closed:
            return
        await super().aclose()
        if self._owns_client:
            for close in (self.client.aclose, *self._closers):
                try:
                    await close()
                except (RedisError, OSError) as exc:
                    # A connection slow to close (a server gone, a loaded machine): it is
                    # dropped all the same, and the store is closed.
                    logger.warning("closing the Redis client's connections failed: %s", exc)


_STORE_OPTIONS = frozenset(inspect.signature(RedisStateStore.__init__).parameters) - {
    "self",
    "client",
    "owns_client",
}


def _durable_writes(
    pipeline: AutoPipeline,
    durability: object,
    min_replicas: object,
    timeout: object,
    *,
    retry: RetryPolicy,
) -> DurableWrites | None:
    if durability == "primary":
        return None
    if durability != "replicas":
        raise ConfigurationError(f"durability must be 'primary' or 'replicas', got {durability!r}")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise ConfigurationError(f"durability_timeout must be a number, got {timeout!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"durability_timeout must be above 0, got {timeout!r}")
    return DurableWrites(
        pipeline,
        min_replicas=check_count(min_replicas, name="min_replicas"),
        timeout=float(timeout),
        retry=retry,
    )


def _check_flag(value: object, *, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses", False))
