"""Throw-away redis-server processes for tests and benchmarks: one server, or a cluster (with
replicas if asked); :mod:`.redis_sentinel` adds a primary with replicas watched by Sentinels.

Each runs on a free loopback port in its own temporary directory and is stopped by whoever started
it (atexit kills any survivor). A missing redis-server binary is an error, never a skip (Debian and
Ubuntu: ``apt-get install redis-server``)::

    with RedisServer() as server:          # or RedisServer("--appendonly", "yes").start()
        store = RedisStateStore.from_url(server.url)
        ...
        server.kill(); server.restart()    # faults: SIGKILL, SIGSTOP (pause/resume), restart
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_survivors() -> None:
    for process in list(_LIVE):
        with contextlib.suppress(OSError):
            process.kill()


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed (Debian: apt-get install redis-server; in this repository "
            "`make test` installs it)"
        )
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_port(*, cluster_bus: bool = False) -> int:
    """A free loopback port; with ``cluster_bus``, one whose cluster bus port (+10000) is free."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port == 6379:
            continue
        if not cluster_bus:
            return port
        if port + 10000 < 65536 and _port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port found")


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} within {timeout} s\n{tail}")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Managed:
    """``with`` starts it; at the end, or if starting failed, it stops and removes its files."""

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class RedisServer(_Managed):
    """One redis-server on 127.0.0.1 and a free port, in a temporary directory.

    ``restart()`` starts it again on the same port and directory, so data kept by AOF survives.
    """

    def __init__(self, *args: str, port: int | None = None, cluster_bus: bool = False) -> None:
        self.port = port if port is not None else find_free_port(cluster_bus=cluster_bus)
        self.dir = Path(tempfile.mkdtemp(prefix=f"chatstate-redis-{self.port}-"))
        self.log = self.dir / "redis.log"
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        return self._launch(self._command(), timeout)

    def start_sentinel(self, config: Path, timeout: float = 10.0) -> Self:
        """Start it as a Sentinel with ``config`` (which the Sentinel rewrites as it learns)."""
        return self._launch([redis_binary(), str(config), "--sentinel", *self._where()], timeout)

    def _where(self) -> list[str]:
        return [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log),
            "--daemonize",
            "no",
        ]

    def _command(self) -> list[str]:
        return [
            redis_binary(),
            *self._where(),
            "--save",
            "",
            "--appendonly",
            "no",
            *self.args,
        ]

    def _launch(self, command: list[str], timeout: float) -> Self:
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _LIVE.add(self.process)
        process = self.process
        _wait_for(
            lambda: process.poll() is not None or _ping(self.port),
            timeout,
            f"redis-server on port {self.port} did not answer PING",
            self.log,
        )
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"redis-server on port {self.port} exited: {error}")
        return self

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self._forget()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering, as in a network stall."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._forget()

    def restart(self, timeout: float = 10.0) -> Self:
        self.stop()
        return self.start(timeout)

    def _forget(self) -> None:
        if self.process is not None:
            _LIVE.discard(self.process)
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalRedisCluster(_Managed):
    """A Redis Cluster on free loopback ports: ``masters`` masters (3), each with ``replicas``
    replicas (none by default). ``node_timeout`` (ms) is how long a silent master takes to be
    failed over to its replica.

    For faults: :meth:`master_of` a key, :meth:`replica_of` a master, :meth:`wait_for_master`
    after killing one (``node.kill()``), :meth:`move_slot` to reshard one slot live.
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout: int = 5000) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout),
                # A replica (re)joining syncs at once, not after the default 5 s wait for others.
                "--repl-diskless-sync-delay",
                "0",
                cluster_bus=True,
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> Self:
        for node in self.nodes:
            node.start()
        done = subprocess.run(
            [
                redis_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {done.stdout!r} {done.stderr!r}"
            )
        self.wait_until_ok(timeout)
        return self

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and every replica is in sync."""
        self._wait_for_state_ok(timeout)
        for node in self.live():
            if self._role(node) == "slave":
                _wait_for(
                    functools.partial(in_sync, node.port),
                    timeout,
                    f"replica {node.port} did not sync",
                    node.log,
                )

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def _role(self, node: RedisServer) -> str:
        return cli(node.port, "role").split(b"\n", 1)[0].decode().strip()

    def _node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def _ids(self) -> dict[str, RedisServer]:
        """Node id: server, from the first live node's view."""
        lines = cli(self.live()[0].port, "cluster", "nodes").decode().splitlines()
        found = {}
        for line in lines:
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            found[fields[0]] = self._node(port)
        return found

    def node_id(self, node: RedisServer) -> str:
        return cli(node.port, "cluster", "myid").decode().strip()

    def master_of(self, key: str) -> RedisServer:
        """The master that serves ``key``'s slot now (asked of a live node)."""
        slot = int(cli(self.live()[0].port, "cluster", "keyslot", key))
        return self.master_of_slot(slot)

    def master_of_slot(self, slot: int) -> RedisServer:
        for line in cli(self.live()[0].port, "cluster", "nodes").decode().splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return self._node(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master: RedisServer, timeout: float = 10.0) -> RedisServer:
        """A live replica of ``master``, waiting up to ``timeout`` for the master to see one (a
        replica that just joined reaches its view by gossip, a moment later)."""
        master_id = self.node_id(master)
        found: list[int] = []

        def seen() -> bool:
            for line in cli(master.port, "cluster", "nodes").decode().splitlines():
                fields = line.split()
                if fields[3] == master_id and "fail" not in fields[2]:
                    found.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
                    return True
            return False

        _wait_for(seen, timeout, f"master {master.port} has no replica")
        return self._node(found[0])

    def wait_for_master(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Until ``node`` is a master and the cluster is ok again (after a failover)."""
        _wait_for(lambda: self._role(node) == "master", timeout, f"{node.port} not promoted")
        self._wait_for_state_ok(timeout)

    def _wait_for_state_ok(self, timeout: float) -> None:
        for node in self.live():
            _wait_for(
                functools.partial(_cluster_ok, node.port),
                timeout,
                f"cluster node {node.port} did not reach cluster_state:ok",
                node.log,
            )

    def move_slot(
        self,
        slot: int,
        target: RedisServer,
        *,
        between: Callable[[], None] | None = None,
        keys_per_step: int = 1,
    ) -> int:
        """Move ``slot`` to ``target`` live, as redis-cli's resharding does: IMPORTING on the
        target, MIGRATING on the source, MIGRATE its keys ``keys_per_step`` at a time (calling
        ``between`` before each step, so that clients meet the slot half moved), then the slot
        is the target's everywhere. Returns the keys moved."""
        source = self.master_of_slot(slot)
        if source is target:
            return 0
        cli(target.port, "cluster", "setslot", slot, "importing", self.node_id(source))
        cli(source.port, "cluster", "setslot", slot, "migrating", self.node_id(target))
        moved = 0
        while True:
            if between is not None:
                between()
            listed = cli(source.port, "cluster", "getkeysinslot", slot, keys_per_step)
            keys = listed.decode().split()
            if not keys:
                break
            reply = cli(
                source.port, "migrate", "127.0.0.1", target.port, "", 0, 5000, "keys", *keys
            )
            if reply.strip() != b"OK":
                raise RuntimeError(f"MIGRATE of slot {slot} failed: {reply!r}")
            moved += len(keys)
        target_id = self.node_id(target)
        for node in (target, source, *self.live()):
            if self._role(node) == "master":
                cli(node.port, "cluster", "setslot", slot, "node", target_id)
        return moved

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def cli(port: int, *args: object) -> bytes:
    """``redis-cli -p port args...``: its output (empty if the server did not answer)."""
    done = subprocess.run(
        [redis_binary("redis-cli"), "-p", str(port), *map(str, args)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return done.stdout


def in_sync(port: int) -> bool:
    """Whether the replica at ``port`` is in sync with its primary."""
    return b"master_link_status:up" in cli(port, "info", "replication")


def _cluster_ok(port: int) -> bool:
    return b"cluster_state:ok" in cli(port, "cluster", "info")
