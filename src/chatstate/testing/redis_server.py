"""Throw-away redis-server processes for tests and benchmarks: one server, or a 3-master cluster.

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
        command = [
            redis_binary(),
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
            "--save",
            "",
            "--appendonly",
            "no",
            *self.args,
        ]
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
    """A Redis Cluster of three masters (no replicas) on free loopback ports."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                cluster_bus=True,
            )
            for _ in range(masters)
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
        for node in self.nodes:
            _wait_for(
                functools.partial(_cluster_ok, node.port),
                timeout,
                f"cluster node {node.port} did not reach cluster_state:ok",
                node.log,
            )
        return self

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _cluster_ok(port: int) -> bool:
    done = subprocess.run(
        [redis_binary("redis-cli"), "-p", str(port), "cluster", "info"],
        capture_output=True,
        timeout=5,
        check=False,
    )
    return b"cluster_state:ok" in done.stdout
