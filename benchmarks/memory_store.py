"""In-memory benchmark: chatstate beside the plain-Python floor, measured in the same run.

    python benchmarks/memory.py [--quick] [--rounds N] [--json PATH]

Each scenario alternates rounds of ours and of its floor, so a noisy machine moves both sides; the
ratio of the medians is the figure that counts (DESIGN.md section 4). The floors are what a careful
user would write by hand with plain dicts and lists, awaited the same way as the store, so a ratio
measures what the store adds, not the cost of `await`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from common import PAYLOAD, conversation, environment, percentile, publish

from chatstate import (
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    StateMiddlewareConfig,
)

Op = Callable[[int], Awaitable[object]]


@dataclass
class Result:
    scenario: str
    ours_p50_us: float
    ours_p99_us: float
    floor_p50_us: float
    floor_p99_us: float
    ratio: float
    target: str
    ok: bool | None


async def _time_batch(op: Op, batch: int) -> float:
    """Microseconds per operation over one batch."""
    started = time.perf_counter_ns()
    for index in range(batch):
        await op(index)
    return (time.perf_counter_ns() - started) / batch / 1000


async def compare(
    name: str, ours: Op, floor: Op, *, rounds: int, batch: int, target: float | None, unit: str
) -> Result:
    """Alternate batches of ``ours`` and ``floor``; compare their medians."""
    for op in (ours, floor):  # warm up both
        await _time_batch(op, batch)
    ours_samples: list[float] = []
    floor_samples: list[float] = []
    for _ in range(rounds):
        ours_samples.append(await _time_batch(ours, batch))
        floor_samples.append(await _time_batch(floor, batch))
    ours_p50 = statistics.median(ours_samples)
    floor_p50 = statistics.median(floor_samples)
    ratio = ours_p50 / floor_p50
    return Result(
        scenario=name,
        ours_p50_us=ours_p50,
        ours_p99_us=percentile(ours_samples, 0.99),
        floor_p50_us=floor_p50,
        floor_p99_us=percentile(floor_samples, 0.99),
        ratio=ratio,
        target=unit,
        ok=None if target is None else ratio <= target,
    )


class InstantProvider:
    """Answers at once with a ready reply: the benchmark measures the pipeline, not a model."""

    def __init__(self) -> None:
        self.reply = Message(role="assistant", content=PAYLOAD)

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        return self.reply


async def _load_scenario(stored: int, *, rounds: int, batch: int) -> Result:
    store = InMemoryStateStore()
    plain: dict[str, list[Message]] = {}
    sessions = [f"session-{index}" for index in range(100)]
    for session_id in sessions:
        await store.save(session_id, conversation(stored))
        plain[session_id] = conversation(stored)

    async def ours(index: int) -> object:
        return await store.load(sessions[index % 100], limit=20)

    async def floor(index: int) -> object:
        return list(plain[sessions[index % 100]])[-20:]

    return await compare(
        f"load(limit=20) of {stored}",
        ours,
        floor,
        rounds=rounds,
        batch=batch,
        target=3.0,
        unit="<= 3 x floor",
    )


async def _append_scenario(*, rounds: int, batch: int) -> Result:
    store = InMemoryStateStore()
    plain: dict[str, list[Message]] = {}
    turn = conversation(2)
    sessions = [f"session-{index}" for index in range(100)]

    async def ours(index: int) -> object:
        return await store.append(sessions[index % 100], turn, max_messages=20, ttl=3600)

    async def floor(index: int) -> object:
        stored = plain.setdefault(sessions[index % 100], [])
        stored.extend(turn)
        del stored[:-20]
        return len(stored)

    return await compare(
        "append(2, max 20, ttl)",
        ours,
        floor,
        rounds=rounds,
        batch=batch,
        target=None,
        unit="(informative)",
    )


async def _turn_scenario(*, rounds: int, batch: int) -> tuple[Result, Result]:
    store = InMemoryStateStore()
    provider = InstantProvider()
    pipe = Pipeline(
        StateMiddleware(store, StateMiddlewareConfig(max_messages=20)),
        ProviderMiddleware(provider),
    )
    plain: dict[str, list[Message]] = {}
    sessions = [f"session-{index}" for index in range(100)]

    async def ours(index: int) -> object:
        return await pipe.execute_with_session(sessions[index % 100], "user", PAYLOAD)

    async def floor(index: int) -> object:
        # The same work by hand: build the message, load, call the provider, append and trim.
        stored = plain.setdefault(sessions[index % 100], [])
        message = Message(role="user", content=PAYLOAD)
        reply = await provider.complete([*stored[-20:], message])
        stored.extend((message, reply))
        del stored[:-20]
        return reply

    result = await compare(
        "pipeline turn",
        ours,
        floor,
        rounds=rounds,
        batch=batch,
        target=None,
        unit="(see overhead)",
    )
    overhead = Result(
        scenario="pipeline turn, median",
        ours_p50_us=result.ours_p50_us,
        ours_p99_us=result.ours_p99_us,
        floor_p50_us=result.floor_p50_us,
        floor_p99_us=result.floor_p99_us,
        ratio=result.ratio,
        target="ours <= 25 us",
        ok=result.ours_p50_us <= 25.0,
    )
    return result, overhead


async def _memory_scenario(sessions: int) -> dict[str, float]:
    """Python heap bytes per session of 20 messages: the store beside a dict of lists."""

    async def measure(fill: Callable[[], Awaitable[object]]) -> tuple[float, object]:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = await fill()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / sessions, kept

    async def fill_store() -> object:
        store = InMemoryStateStore(max_sessions=None)
        for index in range(sessions):
            await store.append(f"session-{index}", conversation(20), max_messages=20, ttl=3600)
        return store

    async def fill_plain() -> object:
        plain: dict[str, list[Message]] = {}
        for index in range(sessions):
            plain[f"session-{index}"] = conversation(20)
        return plain

    ours, _ = await measure(fill_store)
    floor, _ = await measure(fill_plain)
    return {"sessions": sessions, "ours_bytes_per_session": ours, "floor_bytes_per_session": floor}


async def run(*, quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """Run every scenario; returns all figures."""
    rounds = rounds if rounds is not None else (15 if quick else 60)
    batch = 500 if quick else 2000
    results = [
        await _load_scenario(20, rounds=rounds, batch=batch),
        await _load_scenario(200, rounds=rounds, batch=batch),
        await _append_scenario(rounds=rounds, batch=batch),
        *await _turn_scenario(rounds=rounds, batch=max(100, batch // 4)),
    ]
    memory = await _memory_scenario(1000 if quick else 10_000)
    return {
        **environment("in-memory"),
        "rounds": rounds,
        "batch": batch,
        "results": [asdict(result) for result in results],
        "memory": memory,
    }


def format_table(report: dict[str, Any]) -> str:
    header = (
        f"{'scenario':<26} {'ours p50':>9} {'ours p99':>9} {'floor p50':>10} {'floor p99':>10}"
        f" {'ratio':>6}  {'target':<15} ok"
    )
    lines = [header, "-" * len(header)]
    for row in report["results"]:
        ok = {True: "yes", False: "NO", None: "-"}[row["ok"]]
        lines.append(
            f"{row['scenario']:<26} {row['ours_p50_us']:>8.2f}µ {row['ours_p99_us']:>8.2f}µ"
            f" {row['floor_p50_us']:>9.2f}µ {row['floor_p99_us']:>9.2f}µ {row['ratio']:>6.2f}"
            f"  {row['target']:<15} {ok}"
        )
    memory = report["memory"]
    lines.append(
        f"memory: {memory['ours_bytes_per_session']:,.0f} B/session in the store vs "
        f"{memory['floor_bytes_per_session']:,.0f} B/session in a dict of lists "
        f"({memory['sessions']:,} sessions x 20 messages of {report['message_bytes']} B)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per side")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    report = asyncio.run(run(quick=args.quick, rounds=args.rounds))
    publish(format_table(report), report, args.json)
    return report


if __name__ == "__main__":
    main()
