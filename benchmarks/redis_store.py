"""Redis benchmark: RedisStateStore beside the hand-written redis.asyncio floor, in the same run.

    python benchmarks/redis_store.py [--redis URL] [--quick] [--sessions 1,100,1000] [--json PATH]

Without --redis it starts a throw-away redis-server on a free port and stops it afterwards.

A turn is what the state middleware does per request: load the newest 20 messages, then append two
(max 20, with a TTL). The floor does the same work as a careful user would write it by hand, one
redis.asyncio call per operation on the same connection pool: LRANGE, then a MULTI/EXEC of
RPUSH + LTRIM + PEXPIRE, with the same JSON (de)serialisation of messages. The two sides alternate,
round by round, so a noisy machine moves both. Round trips are counted at the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from common import PAYLOAD, conversation, environment, percentile, publish
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection

from chatstate import Message, RedisStateStore
from chatstate.testing import RedisServer

TTL_SECONDS = 3600


class CountingConnection(Connection):
    """Counts writes to the server: one per round trip, however many commands it carries."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


Turn = Callable[[str], Awaitable[tuple[float, float]]]


def _ours(store: RedisStateStore) -> Turn:
    new = conversation(2)

    async def turn(session_id: str) -> tuple[float, float]:
        started = time.perf_counter()
        await store.load(session_id, limit=20)
        loaded = time.perf_counter()
        await store.append(session_id, new, max_messages=20, ttl=TTL_SECONDS)
        return loaded - started, time.perf_counter() - loaded

    return turn


def _floor(client: Redis, prefix: str) -> Turn:
    new = conversation(2)

    async def turn(session_id: str) -> tuple[float, float]:
        key = f"{prefix}:{{{session_id}}}:messages"
        started = time.perf_counter()
        raw = await client.lrange(key, -20, -1)
        [Message.model_validate_json(entry) for entry in raw]
        loaded = time.perf_counter()
        async with client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(message.model_dump_json() for message in new))
            pipe.ltrim(key, -20, -1)
            pipe.pexpire(key, TTL_SECONDS * 1000)
            await pipe.execute()
        return loaded - started, time.perf_counter() - loaded

    return turn


async def _round(turn: Turn, sessions: int, turns: int, tag: str) -> dict[str, Any]:
    loads: list[float] = []
    appends: list[float] = []

    async def session(index: int) -> None:
        session_id = f"{tag}-{index}"
        for _ in range(turns):
            load, append = await turn(session_id)
            loads.append(load)
            appends.append(append)

    sent_before = CountingConnection.sent
    started = time.perf_counter()
    await asyncio.gather(*(session(index) for index in range(sessions)))
    elapsed = time.perf_counter() - started
    total = sessions * turns
    return {
        "turns_per_s": total / elapsed,
        "load_p50_ms": percentile(loads, 0.5) * 1000,
        "load_p99_ms": percentile(loads, 0.99) * 1000,
        "append_p50_ms": percentile(appends, 0.5) * 1000,
        "append_p99_ms": percentile(appends, 0.99) * 1000,
        "round_trips_per_turn": (CountingConnection.sent - sent_before) / total,
    }


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def _bytes_per_message(client: Redis, store: RedisStateStore) -> dict[str, float]:
    session_id = "memory-probe"
    await store.save(session_id, conversation(20))
    used = await client.memory_usage(store.key(session_id), samples=0)
    await store.delete(session_id)
    per_message = (used or 0) / 20
    return {
        "payload_bytes": len(PAYLOAD),
        "stored_bytes_per_message": per_message,
        "overhead_bytes": per_message - len(PAYLOAD),
    }


async def run(
    url: str, *, sessions: Sequence[int], turns: int, repeats: int, max_connections: int
) -> dict[str, Any]:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, connection_class=CountingConnection
    )
    client = Redis(connection_pool=pool)
    prefix = f"bench-{int(time.time())}"
    store = RedisStateStore(client, prefix=prefix)
    ours, floor = _ours(store), _floor(client, f"{prefix}-floor")
    scenarios = []
    try:
        await client.ping()
        for count in sessions:
            warm = min(count, max_connections)  # opens the connections, loads the scripts
            await _round(ours, warm, 2, "warm")
            await _round(floor, warm, 2, "warm")
            ours_rounds, floor_rounds = [], []
            for repeat in range(repeats):
                ours_rounds.append(await _round(ours, count, turns, f"s{count}-{repeat}"))
                floor_rounds.append(await _round(floor, count, turns, f"s{count}-{repeat}"))
            mine, base = _median_of(ours_rounds), _median_of(floor_rounds)
            scenarios.append(
                {
                    "sessions": count,
                    "turns_per_session": turns,
                    "ours": mine,
                    "floor": base,
                    "throughput_ratio": mine["turns_per_s"] / base["turns_per_s"],
                    "load_p99_ratio": mine["load_p99_ms"] / base["load_p99_ms"],
                }
            )
        memory = await _bytes_per_message(client, store)
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()
        await pool.aclose()
    return {
        **environment("redis"),
        "max_connections": max_connections,
        "repeats": repeats,
        "scenarios": scenarios,
        "memory": memory,
    }


def format_table(report: dict[str, Any]) -> str:
    header = (
        f"{'sessions':>8} {'side':<6} {'turns/s':>9} {'load p50':>9} {'load p99':>9}"
        f" {'append p50':>10} {'append p99':>10} {'trips/turn':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in report["scenarios"]:
        for side in ("ours", "floor"):
            figures = row[side]
            lines.append(
                f"{row['sessions']:>8} {side:<6} {figures['turns_per_s']:>9,.0f}"
                f" {figures['load_p50_ms']:>7.2f}ms {figures['load_p99_ms']:>7.2f}ms"
                f" {figures['append_p50_ms']:>8.2f}ms {figures['append_p99_ms']:>8.2f}ms"
                f" {figures['round_trips_per_turn']:>10.2f}"
            )
        lines.append(
            f"{'':>8} ratio  throughput {row['throughput_ratio']:.2f} x floor,"
            f" load p99 {row['load_p99_ratio']:.2f} x floor"
        )
    memory = report["memory"]
    lines.append(
        f"stored bytes per message: {memory['stored_bytes_per_message']:.0f} for a "
        f"{memory['payload_bytes']}-byte payload (+{memory['overhead_bytes']:.0f} B)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--redis", metavar="URL", help="a server to use (default: start one)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--sessions", default="1,100,1000", help="concurrent sessions, e.g. 1,100")
    parser.add_argument("--turns", type=int, default=None, help="turns per session and round")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds per side")
    parser.add_argument("--max-connections", type=int, default=100, help="pool size, both sides")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    sessions = [int(part) for part in args.sessions.split(",") if part]
    turns = args.turns if args.turns is not None else (3 if args.quick else 20)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)

    def go(url: str) -> dict[str, Any]:
        return asyncio.run(
            run(
                url,
                sessions=sessions,
                turns=turns,
                repeats=repeats,
                max_connections=args.max_connections,
            )
        )

    if args.redis:
        report = go(args.redis)
    else:
        with RedisServer() as server:
            report = go(server.url)
    publish(format_table(report), report, args.json)
    return report


if __name__ == "__main__":
    main()
