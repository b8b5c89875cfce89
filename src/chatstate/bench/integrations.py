"""The framework integrations beside the frameworks' own Redis implementations: the same turn
(read the latest ``history`` items, then add the turn's two), on the same server and connection
pool, in alternating rounds of the same run. A framework that is not installed is left out, with
a note.

- OpenAI Agents SDK: :class:`~chatstate.integrations.openai_agents.ChatStateSession` beside
  ``agents.extensions.memory.RedisSession`` (``get_items(limit)``, then ``add_items``).
- LlamaIndex: :class:`~chatstate.integrations.llama_index.ChatStateChatStore` beside
  ``llama_index.storage.chat_store.redis.RedisChatStore`` (``aget_messages``, then two
  ``async_add_message``: what ``ChatMemoryBuffer`` does with a turn).

Both of theirs keep every item (they have no bound); ours runs unbounded too, so the work is the
same, and once more bounded to ``history`` items (the variant ``max_items``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from chatstate.bench.measure import Progress, compare_concurrent
from chatstate.bench.options import BenchOptions
from chatstate.bench.results import (
    Measured,
    PlanItem,
    Row,
    SideMetric,
    concurrent_details,
    side_rows,
)
from chatstate.bench.workload import Workload

if TYPE_CHECKING:
    from chatstate.bench.redis import RedisBench

__all__ = ["missing_notes", "plan"]

AGENTS_FLOOR = "RedisSession (openai-agents)"
LLAMA_INDEX_FLOOR = "RedisChatStore (llama-index)"
BOUNDED = "max_items=history"


@dataclass(frozen=True, slots=True)
class _Scenario:
    key: str
    text: str

    def describe(self, options: BenchOptions) -> str:
        return self.text.format(history=options.history, size=options.message_bytes)


AGENTS_TURN = _Scenario(
    "agents_turn",
    "OpenAI Agents Session turn: get_items(limit={history}), add_items(2 items of {size} B)",
)
LLAMA_INDEX_TURN = _Scenario(
    "llama_index_turn",
    "LlamaIndex chat store turn: aget_messages, 2 x async_add_message ({size} B)",
)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def _agents() -> bool:
    return _has("agents.extensions.memory.redis_session")


def _llama_index() -> bool:
    return _has("llama_index.storage.chat_store.redis")


def missing_notes() -> list[str]:
    """Why rows of this module are missing from a run, if they are."""
    notes = []
    if not _agents():
        notes.append("integrations: openai-agents is not installed: no agents_turn rows")
    if not _llama_index():
        notes.append(
            "integrations: llama-index-storage-chat-store-redis is not installed: no "
            "llama_index_turn rows"
        )
    return notes


def plan(bench: RedisBench, options: BenchOptions) -> list[PlanItem]:
    """A turn of each installed framework's adapter beside its own Redis implementation, at
    ``options.secondary_sessions`` sessions."""
    sessions = options.secondary_sessions
    runs: list[tuple[_Scenario, Callable[..., Any]]] = []
    if _agents():
        runs.append((AGENTS_TURN, _agents_sides))
    if _llama_index():
        runs.append((LLAMA_INDEX_TURN, _llama_index_sides))
    return [
        PlanItem(
            group="redis",
            key=f"{scenario.key}@{sessions}",
            name=f"redis: {scenario.describe(options)}, {sessions:,} sessions",
            run=lambda progress, scenario=scenario, sides=sides: _run(  # type: ignore[misc]
                bench, scenario, sides, sessions, options, progress
            ),
        )
        for scenario, sides in runs
    ]


async def _run(
    bench: RedisBench,
    scenario: _Scenario,
    make_sides: Callable[[RedisBench, BenchOptions], tuple[dict[str, Workload], str]],
    sessions: int,
    options: BenchOptions,
    progress: Progress,
) -> Measured:
    from chatstate.bench.redis_counting import round_trips

    sides, floor_name = make_sides(bench, options)
    ids = [f"{scenario.key}{sessions}-{index}" for index in range(sessions)]
    figures = await compare_concurrent(
        sides,
        ids,
        turns=options.turns,
        rounds=options.repeats,
        round_trips=round_trips,
        progress=progress,
    )
    metrics: list[SideMetric] = [
        ("throughput", "turns/s", attrgetter("turns_per_s"), None),
        ("load p50", "ms", lambda figures: figures.latency_ms["load"]["p50"], None),
    ]
    rows: list[Row] = side_rows(
        "redis",
        scenario,
        sessions,
        options,
        figures,
        lambda side: metrics,
        round_trips=True,
        floor_name=floor_name,
    )
    return Measured(rows, concurrent_details(sessions, options.turns, figures))


def _items(options: BenchOptions) -> Callable[[], list[dict[str, str]]]:
    """The turn's two items, new ones every turn (as a real conversation's are)."""
    counter = iter(range(1 << 62))
    filler = "x" * max(0, options.message_bytes - 40)

    def turn() -> list[dict[str, str]]:
        number = next(counter)
        return [
            {"role": "user", "content": f"question {number} {filler}"},
            {"role": "assistant", "content": f"answer {number} {filler}"},
        ]

    return turn


def _agents_sides(bench: RedisBench, options: BenchOptions) -> tuple[dict[str, Workload], str]:
    from agents.extensions.memory import RedisSession

    from chatstate.integrations.openai_agents import ChatStateSession
    from chatstate.stores import ItemStore, JsonItems

    history, turn = options.history, _items(options)
    plain = ItemStore.over(bench.ours, JsonItems())
    bounded = ItemStore.over(bench.ours, JsonItems(), max_items=history)
    theirs: dict[str, RedisSession] = {}

    def ours(items: ItemStore[Any]) -> Workload:
        sessions: dict[str, ChatStateSession] = {}

        def session(session_id: str) -> ChatStateSession:
            found = sessions.get(session_id)
            if found is None:
                found = sessions[session_id] = ChatStateSession(f"{session_id}-{id(items)}", items)
            return found

        return Workload(
            (
                ("load", lambda session_id: session(session_id).get_items(limit=history)),
                ("append", lambda session_id: session(session_id).add_items(turn())),  # type: ignore[arg-type]
            )
        )

    def their_session(session_id: str) -> RedisSession:
        found = theirs.get(session_id)
        if found is None:
            found = theirs[session_id] = RedisSession(
                session_id, redis_client=bench.client, key_prefix=f"{bench.prefix}-agents"
            )
        return found

    floor = Workload(
        (
            ("load", lambda session_id: their_session(session_id).get_items(limit=history)),
            ("append", lambda session_id: their_session(session_id).add_items(turn())),  # type: ignore[arg-type]
        )
    )
    return {"ours": ours(plain), BOUNDED: ours(bounded), "floor": floor}, AGENTS_FLOOR


def _llama_index_sides(bench: RedisBench, options: BenchOptions) -> tuple[dict[str, Workload], str]:
    import redis
    from llama_index.core.llms import ChatMessage
    from llama_index.storage.chat_store.redis import RedisChatStore  # type: ignore[import-untyped]

    from chatstate.integrations.llama_index import ChatStateChatStore

    history, turn = options.history, _items(options)

    def messages() -> list[ChatMessage]:
        return [ChatMessage(role=item["role"], content=item["content"]) for item in turn()]

    def workload(store: Any, key: Callable[[str], str]) -> Workload:
        async def add(session_id: str) -> None:
            for message in messages():
                await store.async_add_message(key(session_id), message)

        return Workload(
            (
                ("load", lambda session_id: store.aget_messages(key(session_id))),
                ("append", add),
            )
        )

    plain = ChatStateChatStore(bench.ours)
    bounded = ChatStateChatStore(bench.ours, max_messages=history)
    # Its sync client is never used here; given, so that it connects nowhere else.
    where = bench.client.connection_pool.connection_kwargs
    unused = redis.Redis(host=where.get("host", "localhost"), port=where.get("port", 6379))
    theirs = RedisChatStore(redis_client=unused, aredis_client=bench.client)
    return {
        "ours": workload(plain, lambda session_id: f"{session_id}-plain"),
        BOUNDED: workload(bounded, lambda session_id: f"{session_id}-bounded"),
        "floor": workload(theirs, lambda session_id: f"{bench.prefix}-llama:{session_id}"),
    }, LLAMA_INDEX_FLOOR
