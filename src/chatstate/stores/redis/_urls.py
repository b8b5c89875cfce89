"""The clients :meth:`RedisStateStore.from_url` makes: a server, a cluster, or a Sentinel-watched
primary, from one URL.

- ``redis://host:port/db``, ``rediss://...`` (TLS), ``unix:///path``: one server;
- ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``), or any ``redis://``
  URL with ``?cluster=true``: a Redis Cluster, found from those nodes;
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` (or
  ``rediss+sentinel://``): the primary that the Sentinels at those addresses name for
  ``service``, found again after a failover.

The store's own options may be given in the query (``durability=replicas``,
``durability_timeout=0.5``, ``min_replicas=1``, ``prefix=...``); the rest of the query goes to
redis-py, as in its own URLs (``socket_timeout=1``...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel

from chatstate.errors import ConfigurationError

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = ["SCHEMES", "make_client", "store_options_in_query"]

SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)

Closer: TypeAlias = Callable[[], Awaitable[None]]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_QUERY_OPTIONS: dict[str, Callable[[str], Any]] = {
    "durability": str,
    "durability_timeout": float,
    "min_replicas": int,
    "prefix": str,
}


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} in a Redis URL must be true or false, got {text!r}")


def store_options_in_query(url: str) -> tuple[str, dict[str, Any], bool]:
    """The URL without the store's options, those options, and whether it names a cluster."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    cluster = parts.scheme.endswith("+cluster")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "cluster":
            cluster = _flag(name, value) or cluster
        elif name in _QUERY_OPTIONS:
            try:
                options[name] = _QUERY_OPTIONS[name](value)
            except ValueError:
                raise ConfigurationError(
                    f"{name} in a Redis URL must be a number, got {value!r}"
                ) from None
        else:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), options, cluster


def _addresses(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``host:port,host:port`` (after any ``user:password@``)."""
    hosts = netloc.rpartition("@")[2]
    found = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ConfigurationError(f"expected host:port, got {item!r}")
        found.append((host.strip("[]"), int(port) if port else default_port))
    return found


def make_client(
    url: str, options: dict[str, Any], *, cluster: bool
) -> tuple[RedisClient, list[Closer]]:
    """A client for ``url`` (without the store's options) and what else to close with it."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if parts.scheme.endswith("+sentinel"):
        return _sentinel_client(parts, scheme, options)
    plain = urlunsplit(parts._replace(scheme=scheme, netloc=parts.netloc.split(",")[0]))
    if cluster:
        others = _addresses(parts.netloc, 6379)[1:]
        if others:
            options.setdefault("startup_nodes", [ClusterNode(host, port) for host, port in others])
        return RedisCluster.from_url(plain, **options), []
    pool = BlockingConnectionPool.from_url(plain, **options)
    # No I/O: a misspelt option fails here, not at the first connect.
    pool.make_connection()  # type: ignore[no-untyped-call]
    return Redis.from_pool(pool), []


def _sentinel_client(
    parts: Any, scheme: str, options: dict[str, Any]
) -> tuple[RedisClient, list[Closer]]:
    path = [part for part in parts.path.split("/") if part]
    if not path or len(path) > 2:
        raise ConfigurationError(
            "a Sentinel URL names its service: redis+sentinel://host:port[,host:port]/service[/db]"
        )
    userinfo = parts.netloc.rpartition("@")[0]
    db = f"/{path[1]}" if len(path) > 1 else ""
    at = f"{userinfo}@" if userinfo else ""
    # redis-py reads the credentials, the database and the query options as from its own URLs.
    # What the URL says wins over the keyword options, as in redis-py's from_url.
    parsed: dict[str, Any] = dict(parse_url(f"{scheme}://{at}sentinel{db}?{parts.query}"))
    parsed.pop("host", None)
    if parsed.pop("connection_class", None) is not None:
        parsed["ssl"] = True
    connection = {**options, **parsed}
    sentinel_options = {
        name: value for name, value in connection.items() if name.startswith("socket_")
    }
    sentinel_password = connection.pop("sentinel_password", None)
    if sentinel_password is not None:
        sentinel_options["password"] = sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        _addresses(parts.netloc, 26379), sentinel_kwargs=sentinel_options
    )
    client = sentinel.master_for(path[0], redis_class=Redis, **connection)

    async def close_sentinels() -> None:
        for watcher in sentinel.sentinels:
            await watcher.aclose()

    return client, [close_sentinels]
