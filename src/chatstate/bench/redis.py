"""The Redis suite: RedisStateStore beside the hand-written redis.asyncio floors, on one pool.

The pydantic floor is the floor of every scenario; the headline turn also runs beside the naive
dict floor, in the same rounds (see :mod:`chatstate.bench.redis_floors`). Every side shares one
``BlockingConnectionPool`` (a full pool makes callers wait instead of failing), whose connections
count their writes to the server: a write is one round trip, however many commands it carries.
Every key the suite writes starts with one unique prefix and is removed at the end (by SCAN, never
KEYS), also when a scenario fails.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from chatstate._checks import redact_url
from chatstate.bench import encryption, scenarios
from chatstate.bench import workload as w
from chatstate.bench.measure import ConcurrentFigures, Progress, compare_concurrent
from chatstate.bench.options import BenchError, BenchOptions
from chatstate.bench.redis_counting import CountingConnection, round_trips
from chatstate.bench.redis_floors import NaiveDictRedisFloor, PydanticRedisFloor
from chatstate.bench.results import (
    LOAD_P99_CONCURRENT,
    NAIVE_DICT_FLOOR,
    NAIVE_TURN_THROUGHPUT_CONCURRENT,
    NAIVE_TURN_THROUGHPUT_ONE_SESSION,
    PLAIN_LOAD,
    PYDANTIC_FLOOR,
    TURN_THROUGHPUT_CONCURRENT,
    TURN_THROUGHPUT_ONE_SESSION,
    UNENCRYPTED,
    Measured,
    PlanItem,
    Row,
    SideMetric,
    Target,
    compressed_bytes_target,
    concurrent_details,
    side_rows,
    stored_bytes_target,
)
from chatstate.bench.scenarios import Scenario
from chatstate.bench.workload import (
    LARGE_MESSAGE_BYTES,
    Backend,
    Params,
    Workload,
    conversation,
)
from chatstate.messages import Message
from chatstate.stores._near_cache import NearCache
from chatstate.stores.base import StateStore
from chatstate.stores.memory import InMemoryStateStore
from chatstate.stores.redis import RedisStateStore

FAILURES: tuple[type[Exception], ...] = (RedisError,)
"""What a Redis scenario may raise when the server fails (beside ChatStateError and OSError)."""


@dataclass(slots=True)
class RedisBench:
    """An open connection pool with the stores and the floors of one run, all on one client."""

    client: Redis
    prefix: str
    ours: RedisStateStore
    pydantic_floor: PydanticRedisFloor
    naive_floor: NaiveDictRedisFloor
    without_auto_pipeline: RedisStateStore
    uncompressed: RedisStateStore
    zstd: RedisStateStore
    cached: RedisStateStore
    """With a near cache, in the cached_load scenario."""
    encrypted: RedisStateStore
    encrypted_uncached: RedisStateStore
    """The same encrypted sessions, read by a store that remembers no opened message."""
    server_version: str

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, options: BenchOptions) -> AsyncIterator[RedisBench]:
        """Connect, and at the end remove every key written and close the pool."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=options.max_connections,
            timeout=60,
            connection_class=CountingConnection,
        )
        client = Redis(connection_pool=pool)
        prefix = f"chatstate-bench-{uuid.uuid4().hex[:12]}"
        stores: list[RedisStateStore] = []
        keys = encryption.encryption() if encryption.available() else None

        def store(name: str, **store_options: Any) -> RedisStateStore:
            stores.append(RedisStateStore(client, prefix=f"{prefix}-{name}", **store_options))
            return stores[-1]

        try:
            try:
                info = await client.info("server")
            except (RedisError, OSError) as exc:
                raise BenchError(f"cannot reach Redis at {redact_url(url)}: {exc}") from exc
            yield cls(
                client=client,
                prefix=prefix,
                ours=store("ours"),
                pydantic_floor=PydanticRedisFloor(client, f"{prefix}-floor"),
                naive_floor=NaiveDictRedisFloor(client, f"{prefix}-naive"),
                without_auto_pipeline=store("plain", auto_pipeline=False),
                uncompressed=store("json", compress_over=None),
                zstd=store("zstd", compression="zstd"),
                cached=store("cached", near_cache=NearCache()),
                encrypted=store("encrypted", encryption=keys),
                encrypted_uncached=store("encrypted", encryption=keys, message_cache_bytes=0),
                server_version=str(info.get("redis_version", "unknown")),
            )
        finally:
            for opened in stores:
                await opened.aclose()
            with contextlib.suppress(RedisError, OSError):  # the server may be what failed
                await _delete_keys(client, f"{prefix}-*")
            await client.aclose()
            await pool.aclose()

    def environment(self) -> dict[str, Any]:
        return {
            "redis_server": self.server_version,
            "redis_py": redis.__version__,
            "hiredis": redis.utils.HIREDIS_AVAILABLE,
        }


async def _delete_keys(client: Redis, pattern: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


def plan(bench: RedisBench, options: BenchOptions) -> list[PlanItem]:
    """The Redis scenarios, in the order they run: the headline turn at every concurrency level,
    the others at ``options.secondary_sessions``, then stored bytes per message."""

    def item(scenario: Scenario, sessions: int) -> PlanItem:
        return PlanItem(
            group="redis",
            key=f"{scenario.key}@{sessions}",
            name=f"redis: {scenario.describe(options)}, {sessions:,} sessions",
            run=lambda progress: run_scenario(bench, scenario, sessions, options, progress),
        )

    def encrypted_item(sessions: int) -> PlanItem:
        scenario = scenarios.ENCRYPTED_LOAD
        return PlanItem(
            group="redis",
            key=f"{scenario.key}@{sessions}",
            name=f"redis: {scenario.describe(options)}, {sessions:,} sessions",
            run=lambda progress: encrypted_load(bench, sessions, options, progress),
        )

    return [
        *(item(scenarios.TURN, sessions) for sessions in options.sessions),
        *(item(scenario, options.secondary_sessions) for scenario in scenarios.SECONDARY),
        item(scenarios.CACHED_LOAD, options.secondary_sessions),
        item(scenarios.LAZY_TURN, options.secondary_sessions),
        *(
            item(scenario, scenario.sessions(options.secondary_sessions))
            for scenario in scenarios.WINDOWS
        ),
        *(  # else the runner notes why these rows are missing
            [encrypted_item(scenarios.ENCRYPTED_LOAD.sessions(options.secondary_sessions))]
            if encryption.available()
            else []
        ),
        PlanItem(
            group="redis",
            key="stored_bytes",
            name="redis: stored bytes per message",
            run=lambda _: stored_bytes(bench, options),
        ),
    ]


async def run_scenario(
    bench: RedisBench,
    scenario: Scenario,
    sessions: int,
    options: BenchOptions,
    progress: Progress,
) -> Measured:
    """Seed, warm up, then alternate rounds of ours (and its variants: without auto-pipelining
    for the headline turn, without and with another compression for large messages) and of the
    floor (and, for the headline turn, of the naive dict floor), all sessions at once."""
    params = scenario.params(options, fresh=True)
    ids = [f"{scenario.key}{sessions}-{index}" for index in range(sessions)]
    variants = _variants(bench, scenario)
    ours: StateStore = bench.cached if scenario is scenarios.CACHED_LOAD else bench.ours
    sides = {
        "ours": scenario.ours(ours, params),
        **{name: scenario.ours(store, params) for name, store in variants.items()},
        **_variant_sides(bench, scenario, params),
        "floor": scenario.floor(scenario.floor_backend(ours, bench.pydantic_floor), params),
    }
    backends: list[Backend] = [ours, *variants.values()]
    if not scenario.floor_is_ours:
        backends.append(bench.pydantic_floor)
    if scenario is scenarios.TURN:
        sides[NAIVE_DICT_FLOOR] = scenario.floor(bench.naive_floor, params)
        backends.append(bench.naive_floor)
    progress.detail("seeding")
    await scenarios.seed(backends, ids, scenario.seed_count(options), params)
    figures = await compare_concurrent(
        sides,
        ids,
        turns=options.turns,
        rounds=options.repeats,
        round_trips=round_trips,
        progress=progress,
    )
    rows = _rows(scenario, sessions, options, figures)
    details = concurrent_details(sessions, options.turns, figures)
    return Measured(rows, details)


async def encrypted_load(
    bench: RedisBench, sessions: int, options: BenchOptions, progress: Progress
) -> Measured:
    """``RedisStateStore(encryption=...)`` loads beside the plain store's, all sessions at once:
    with the default message cache (ours) and with none, beside the same store unencrypted."""
    scenario = scenarios.ENCRYPTED_LOAD
    params = scenario.params(options, fresh=True)
    ids = [f"{scenario.key}{sessions}-{index}" for index in range(sessions)]
    sides = encryption.encrypted_sides(
        bench.ours, bench.encrypted, bench.encrypted_uncached, params
    )
    progress.detail("seeding")
    await scenarios.seed((bench.ours, bench.encrypted), ids, scenario.seed_count(options), params)
    figures = await compare_concurrent(
        sides,
        ids,
        turns=options.turns,
        rounds=options.repeats,
        round_trips=round_trips,
        progress=progress,
    )
    details = concurrent_details(sessions, options.turns, figures)
    return Measured(_rows(scenario, sessions, options, figures), details)


def _variants(bench: RedisBench, scenario: Scenario) -> dict[str, StateStore]:
    """The same store set otherwise, measured beside it: what one feature buys."""
    if scenario is scenarios.TURN:
        return {"auto_pipeline=False": bench.without_auto_pipeline}
    if scenario is scenarios.LARGE_MESSAGES:
        return {"compress_over=None": bench.uncompressed, "compression='zstd'": bench.zstd}
    if scenario is scenarios.CACHED_LOAD:
        return {"no cache (Redis)": bench.ours, "in-memory store": InMemoryStateStore()}
    return {}


def _variant_sides(bench: RedisBench, scenario: Scenario, params: Params) -> dict[str, Workload]:
    """Variants that are the same store run another way (not another store)."""
    if scenario is scenarios.LAZY_TURN:
        return {"lazy=False": w.eager_command_turn(bench.ours, params)}
    return {}


_Metric = SideMetric
_LOAD_P50: _Metric = ("load p50", "ms", lambda figures: figures.latency_ms["load"]["p50"], None)


def _metrics(scenario: Scenario, sessions: int) -> list[_Metric]:
    """What the table shows of a concurrent scenario beside the pydantic floor (or the floor
    of its own): its throughput and, for the headline turn and large messages, the load latency;
    with the targets that apply at this many sessions."""
    if scenario.unit == "ops/s":
        return [("throughput", scenario.unit, attrgetter("ops_per_s"), None)]
    if scenario is scenarios.LARGE_MESSAGES or scenario is scenarios.ENCRYPTED_LOAD:
        # What compression, or encryption, costs (or saves) a load
        return [("throughput", scenario.unit, attrgetter("turns_per_s"), None), _LOAD_P50]
    if scenario is not scenarios.TURN:
        return [("throughput", scenario.unit, attrgetter("turns_per_s"), None)]
    p99 = LOAD_P99_CONCURRENT if sessions >= 1000 else None
    return _turn_metrics(
        sessions, TURN_THROUGHPUT_ONE_SESSION, TURN_THROUGHPUT_CONCURRENT, load_p99=p99
    )


def _turn_metrics(
    sessions: int, one_session: Target, concurrent: Target, *, load_p99: Target | None
) -> list[_Metric]:
    """The headline turn's throughput, load p50 and load p99, with their targets: ``one_session``
    at 1 session, ``concurrent`` at 100 and more (between them docs/benchmarks.md sets none)."""
    throughput_target = None
    if sessions == 1:
        throughput_target = one_session
    elif sessions >= 100:
        throughput_target = concurrent
    return [
        ("throughput", scenarios.TURN.unit, attrgetter("turns_per_s"), throughput_target),
        _LOAD_P50,
        ("load p99", "ms", lambda figures: figures.latency_ms["load"]["p99"], load_p99),
    ]


def _floor_name(scenario: Scenario) -> str:
    if scenario.floor_is_ours:
        return PLAIN_LOAD
    if scenario is scenarios.ENCRYPTED_LOAD:
        return UNENCRYPTED
    return PYDANTIC_FLOOR


def _rows(
    scenario: Scenario, sessions: int, options: BenchOptions, figures: dict[str, ConcurrentFigures]
) -> list[Row]:
    """Each side's figures beside the floor's, and ours beside the naive dict floor where it
    ran; targets hold for ours itself, not its variants."""

    def beside(name: str, sides: dict[str, ConcurrentFigures], metrics: list[_Metric]) -> list[Row]:
        return side_rows(
            "redis",
            scenario,
            sessions,
            options,
            sides,
            lambda side: metrics,
            round_trips=True,
            floor_name=name,
        )

    others = {side: value for side, value in figures.items() if side != NAIVE_DICT_FLOOR}
    rows = beside(_floor_name(scenario), others, _metrics(scenario, sessions))
    if NAIVE_DICT_FLOOR in figures:
        naive = {"ours": figures["ours"], "floor": figures[NAIVE_DICT_FLOOR]}
        targets = (NAIVE_TURN_THROUGHPUT_ONE_SESSION, NAIVE_TURN_THROUGHPUT_CONCURRENT)
        rows += beside(NAIVE_DICT_FLOOR, naive, _turn_metrics(sessions, *targets, load_p99=None))
    return rows


async def _bytes_per_message(
    client: Redis,
    backend: RedisStateStore | PydanticRedisFloor,
    session_id: str,
    history: Sequence[Message],
) -> float:
    key = backend.key(session_id)
    try:
        await backend.append(session_id, history)
        used = await client.memory_usage(key, samples=0)
        return (used or 0) / await client.llen(key)
    finally:
        await client.unlink(key)


async def stored_bytes(bench: RedisBench, options: BenchOptions) -> Measured:
    """Redis memory per stored message (``MEMORY USAGE key SAMPLES 0`` over the list's length),
    ``history`` messages of the run's size and of 2 KiB of English text, ours (compressed from
    1 KiB by default) beside the floor's plain JSON; the 2 KiB also uncompressed and with zstd.

    The key name counts in ``MEMORY USAGE``, so these keys have the shape an app's keys have:
    the default prefix and a short session id (random, and deleted at once), not the run's long
    unique prefix.
    """
    rows: list[Row] = []
    details: dict[str, Any] = {}
    tag = uuid.uuid4().hex[:8]
    stores = {
        "": RedisStateStore(bench.client),
        "compress_over=None": RedisStateStore(bench.client, compress_over=None),
        "compression='zstd'": RedisStateStore(bench.client, compression="zstd"),
    }
    floor = PydanticRedisFloor(bench.client, stores[""].prefix)
    try:
        for size in sorted({options.message_bytes, LARGE_MESSAGE_BYTES}):
            history = conversation(options.history, size)
            session_id = f"bench-{tag}-{size}"
            floor_bytes = await _bytes_per_message(bench.client, floor, session_id, history)
            variants = stores if size == LARGE_MESSAGE_BYTES else {"": stores[""]}
            measured = {
                variant: await _bytes_per_message(bench.client, store, session_id, history)
                for variant, store in variants.items()
            }
            rows.extend(
                Row(
                    group="redis",
                    key="stored_bytes",
                    scenario=f"stored history, {size:,} B messages",
                    variant=variant,
                    metric="bytes per message",
                    unit="B",
                    ours=value,
                    floor=floor_bytes,
                    target=_stored_bytes_target(variant, size, options),
                    floor_name=PYDANTIC_FLOOR,
                )
                for variant, value in measured.items()
            )
            details[str(size)] = {
                "messages": options.history,
                "floor": floor_bytes,
                **{variant or "ours": value for variant, value in measured.items()},
            }
    finally:
        for store in stores.values():
            await store.aclose()
    return Measured(rows, details)


def _stored_bytes_target(variant: str, size: int, options: BenchOptions) -> Target | None:
    """docs/benchmarks.md: the payload + 64 B for the run's messages; 0.6 x the payload for 2 KiB of
    English text compressed. Plain 2 KiB entries get no target: Redis rounds allocations of that
    size up the same way for any client (see the floor)."""
    if size == LARGE_MESSAGE_BYTES and size != options.message_bytes:
        return None if variant == "compress_over=None" else compressed_bytes_target(size)
    return stored_bytes_target(size) if variant == "" else None
