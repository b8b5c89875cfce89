"""A throw-away primary with replicas, watched by three Sentinels, for tests and benchmarks."""

from __future__ import annotations

from typing import Self

from chatstate.testing.redis_server import RedisServer, _Managed, _wait_for, cli, in_sync

__all__ = ["LocalRedisSentinel"]


class LocalRedisSentinel(_Managed):
    """A primary, ``replicas`` replicas (1) and ``sentinels`` Sentinels (3, quorum 2) watching
    it as ``service``, on free loopback ports. A primary silent for ``down_after`` ms is failed
    over. ``url`` is a ``redis+sentinel://`` URL naming every Sentinel."""

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "chatstate",
        down_after: int = 1000,
    ) -> None:
        self.service = service
        self.down_after = down_after
        # A replica (re)joining syncs at once, not after the default 5 s wait for others.
        self.servers = [RedisServer("--repl-diskless-sync-delay", "0") for _ in range(1 + replicas)]
        self.sentinels = [RedisServer() for _ in range(sentinels)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, timeout: float = 30.0) -> Self:
        primary = self.servers[0]
        primary.start()
        for replica in self.servers[1:]:
            replica.args += ["--replicaof", "127.0.0.1", str(primary.port)]
            replica.start()
        for sentinel in self.sentinels:
            config = sentinel.dir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {self.service} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            sentinel.start_sentinel(config)
        _wait_for(
            lambda: all(in_sync(replica.port) for replica in self.servers[1:]),
            timeout,
            "the replicas did not sync",
        )
        _wait_for(
            lambda: all(self._sees_all(sentinel) for sentinel in self.sentinels),
            timeout,
            "the sentinels did not find each other and the replicas",
        )
        return self

    def _sees_all(self, sentinel: RedisServer) -> bool:
        info = cli(sentinel.port, "sentinel", "master", self.service).split(b"\n")
        fields = dict(zip(info[::2], info[1::2], strict=False))
        return (
            int(fields.get(b"num-slaves", b"0") or 0) >= len(self.servers) - 1
            and int(fields.get(b"num-other-sentinels", b"0") or 0) >= len(self.sentinels) - 1
        )

    def primary(self) -> RedisServer:
        """The server the Sentinels name as the primary now."""
        reply = cli(self.sentinels[0].port, "sentinel", "get-master-addr-by-name", self.service)
        port = int(reply.split()[1])
        return next(server for server in self.servers if server.port == port)

    def wait_for_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until the Sentinels name another primary than ``old``, and it says it is one."""
        _wait_for(lambda: self.primary() is not old, timeout, "no failover")
        new = self.primary()
        _wait_for(lambda: cli(new.port, "role").startswith(b"master"), timeout, "not promoted")
        return new

    def cleanup(self) -> None:
        for server in (*self.sentinels, *self.servers):
            server.cleanup()
