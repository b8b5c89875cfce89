"""``chatstate bench --redis-cluster``: the Redis turn on one node and on a cluster, each with the
default durability and with ``durability="replicas"``, on servers the bench starts and stops.

One node is a primary with one replica; the cluster is three masters with a replica each (all
on this machine, so the cluster cannot be faster here: the figures show its overhead and the
cost of waiting for a replica). A turn is a load of the newest ``history`` messages and an append
of two messages; every session of a level runs its turns at once, each turn after the last, and
a level's figure is the best of ``repeats`` rounds (turns a second, and the median and 99th
percentile of a turn's time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from chatstate.bench.options import BenchError, BenchOptions
from chatstate.messages import Message

__all__ = ["ClusterFigures", "run_cluster_bench", "servers"]

SETUPS = ("one node", "one node, durability=replicas", "cluster", "cluster, durability=replicas")


@dataclass(frozen=True, slots=True)
class ClusterFigures:
    setup: str
    sessions: int
    turns_per_second: float
    p50_ms: float
    p99_ms: float


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """A primary with a replica, and a 3 + 3 cluster: their URLs, the servers stopped after."""
    from chatstate.testing.redis_server import LocalRedisCluster, RedisServer, cli

    try:
        with (
            RedisServer() as primary,
            RedisServer() as replica,
            LocalRedisCluster(replicas=1) as cluster,
        ):
            cli(replica.port, "replicaof", "127.0.0.1", primary.port)
            deadline = time.monotonic() + 10
            while b"master_link_status:up" not in cli(replica.port, "info", "replication"):
                if time.monotonic() > deadline:
                    raise BenchError("the replica of the one-node setup did not sync")
                time.sleep(0.02)
            yield primary.url, cluster.url
    except RuntimeError as exc:  # no redis-server binary, or it would not start
        raise BenchError(f"could not start the Redis servers: {exc}") from exc


async def _turns(store: Any, sessions: int, options: BenchOptions, round_: int) -> list[float]:
    text = "x" * options.message_bytes
    durations: list[float] = []

    async def session(name: str) -> None:
        for index in range(options.turns):
            started = time.perf_counter()
            await store.load(name, limit=options.history)
            await store.append(
                name,
                [
                    Message(role="user", content=f"{index} {text}"),
                    Message(role="assistant", content=f"{index} {text}"),
                ],
                max_messages=options.history,
            )
            durations.append(time.perf_counter() - started)

    await asyncio.gather(*(session(f"r{round_}-s{n}") for n in range(sessions)))
    return durations


async def run_cluster_bench(
    node_url: str, cluster_url: str, options: BenchOptions
) -> list[ClusterFigures]:
    """Every setup at every level of ``options.sessions``."""
    from chatstate.stores.redis import RedisStateStore

    figures: list[ClusterFigures] = []
    for setup in SETUPS:
        url = cluster_url if setup.startswith("cluster") else node_url
        durability = "replicas" if "replicas" in setup else "primary"
        store = RedisStateStore.from_url(
            url,
            cluster=setup.startswith("cluster"),
            durability=durability,
            prefix=f"bench-{len(figures)}",
            max_connections=options.max_connections,
        )
        try:
            await _turns(store, 1, options, -1)  # scripts loaded, connections made
            for sessions in options.sessions:
                best: ClusterFigures | None = None
                for round_ in range(options.repeats):
                    started = time.perf_counter()
                    durations = sorted(await _turns(store, sessions, options, round_))
                    elapsed = time.perf_counter() - started
                    measured = ClusterFigures(
                        setup,
                        sessions,
                        len(durations) / elapsed,
                        durations[len(durations) // 2] * 1000,
                        durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000,
                    )
                    if best is None or measured.turns_per_second > best.turns_per_second:
                        best = measured
                assert best is not None
                figures.append(best)
        finally:
            await store.aclose()
    return figures


def render(figures: list[ClusterFigures], options: BenchOptions) -> str:
    """A plain table: each setup's turns a second and latency, and its ratio to one node."""
    base = {f.sessions: f.turns_per_second for f in figures if f.setup == "one node"}
    lines = [
        f"Redis turn (load {options.history} + append 2), {os.cpu_count()} cores, "
        f"{options.turns} turns a session, best of {options.repeats}",
        f"{'setup':32} {'sessions':>8} {'turns/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs node':>8}",
    ]
    for f in figures:
        ratio = f.turns_per_second / base[f.sessions] if base.get(f.sessions) else float("nan")
        lines.append(
            f"{f.setup:32} {f.sessions:>8} {f.turns_per_second:>9.0f} {f.p50_ms:>8.2f} "
            f"{f.p99_ms:>8.2f} {ratio:>7.2f}x"
        )
    return "\n".join(lines)


def to_json(figures: list[ClusterFigures], options: BenchOptions) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "options": options.to_json(),
        "figures": [asdict(f) for f in figures],
    }
