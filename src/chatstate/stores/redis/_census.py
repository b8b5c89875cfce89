"""The Redis census: sessions counted by SCAN, some keys per call, never the keyspace at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster

from chatstate._checks import check_count
from chatstate.stores._backend import BackendCensus
from chatstate.stores.redis._autopipeline import AutoPipeline

__all__ = ["Census"]


@dataclass(frozen=True, slots=True)
class _Pass:
    sessions: int = 0
    mean_length: float = 0.0
    mean_bytes: float = 0.0


class Census:
    """Counts the sessions whose list matches ``pattern`` by SCAN, ``keys_per_call`` keys at a
    time, sampling the length and the memory (``MEMORY USAGE`` of the list) of one key in
    eight; the server's own counters (``INFO stats``, every primary of a cluster) give the
    expirations and evictions."""

    SAMPLE_EVERY = 8

    def __init__(self, pipeline: AutoPipeline, pattern: str, keys_per_call: int) -> None:
        self._pipeline = pipeline
        self._pattern = pattern
        self._keys_per_call = check_count(keys_per_call, name="census_keys")
        self._scan: AsyncIterator[bytes] | None = None
        self._seen = 0
        self._samples: list[tuple[int, int]] = []
        self._last = _Pass()

    async def count(self) -> BackendCensus:
        """Scan on, and report the last completed pass (the first pass, before it completes,
        reports what it has seen)."""
        client = await self._pipeline.ready()
        last = await self._advance()
        if isinstance(client, RedisCluster):
            by_node = await client.info("stats", target_nodes=RedisCluster.PRIMARIES)
            stats = list(by_node.values())
        else:
            stats = [await client.info("stats")]
        return BackendCensus(
            sessions=last.sessions,
            messages=round(last.sessions * last.mean_length),
            storage_bytes=round(last.sessions * last.mean_bytes),
            expirations=sum(int(node.get("expired_keys", 0)) for node in stats),
            evictions=sum(int(node.get("evicted_keys", 0)) for node in stats),
        )

    async def _advance(self) -> _Pass:
        if self._scan is None:
            self._scan = self._pipeline.client.scan_iter(match=self._pattern, count=1000)
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
        execute = self._pipeline.execute
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
        if finished or self._last.sessions == 0:
            count = len(self._samples)
            self._last = _Pass(
                sessions=self._seen,
                mean_length=sum(length for length, _ in self._samples) / count if count else 0.0,
                mean_bytes=sum(size for _, size in self._samples) / count if count else 0.0,
            )
        return self._last
