"""The in-memory suite: InMemoryStateStore beside a plain dict of lists, in the same process."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict

from chatstate.bench import encryption, scenarios
from chatstate.bench.measure import Progress, compare_batches
from chatstate.bench.options import BenchOptions
from chatstate.bench.results import (
    MEMORY_LOAD,
    PIPELINE_OVERHEAD_US,
    Measured,
    PlanItem,
    Row,
    Target,
)
from chatstate.bench.scenarios import Scenario
from chatstate.bench.workload import TTL_SECONDS, Backend, Floor, conversation
from chatstate.messages import Message
from chatstate.stores.memory import InMemoryStateStore

SCENARIOS: Sequence[Scenario] = (scenarios.TURN, *scenarios.SECONDARY, *scenarios.WINDOWS)

_TARGETS: dict[str, Target] = {
    scenarios.LOAD.key: MEMORY_LOAD,
    scenarios.PIPELINE_TURN.key: PIPELINE_OVERHEAD_US,
}


class DictOfListsFloor(Floor[Message]):
    """The floor: a plain dict of lists, as a careful user would keep history by hand. It keeps no
    expiry and no session cap: ours pays for those, the floor does not."""

    def __init__(self) -> None:
        self.lists: dict[str, list[Message]] = {}

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        stored = self.lists.get(session_id)
        if stored is None:
            return []
        return list(stored)[-limit:] if limit else list(stored)

    async def _append(
        self, session_id: str, messages: Sequence[Message], keep: int | None, ttl: float | None
    ) -> int:
        stored = self.lists.setdefault(session_id, [])
        stored.extend(messages)
        if keep is not None:
            del stored[:-keep]
        return len(stored)


def plan(options: BenchOptions) -> list[PlanItem]:
    """The in-memory scenarios, in the order they run."""

    def item(scenario: Scenario) -> PlanItem:
        return PlanItem(
            group="in-memory",
            key=scenario.key,
            name=f"in-memory: {scenario.describe(options)}",
            run=lambda progress: run_scenario(scenario, options, progress),
        )

    items = [item(scenario) for scenario in SCENARIOS]
    if encryption.available():  # else the runner notes why these rows are missing
        encrypted = scenarios.ENCRYPTED_LOAD
        items.append(
            PlanItem(
                group="in-memory",
                key=encrypted.key,
                name=f"in-memory: {encrypted.describe(options)}",
                run=lambda progress: encryption.in_memory_load(options, progress),
            )
        )
    items.append(
        PlanItem(
            group="in-memory",
            key="heap",
            name="in-memory: heap bytes per session",
            run=lambda _: heap_per_session(options),
        )
    )
    return items


async def run_scenario(scenario: Scenario, options: BenchOptions, progress: Progress) -> Measured:
    """Alternate batches of ours and of the floor, cycling through ``max(sessions)`` sessions;
    one row: their median microseconds per turn."""
    params = scenario.params(options)
    ids = [f"{scenario.key}-{index}" for index in range(scenario.sessions(max(options.sessions)))]
    async with InMemoryStateStore(max_sessions=None) as store:
        floor = DictOfListsFloor()
        await scenarios.seed((store, floor), ids, scenario.seed_count(options), params)
        figures = await compare_batches(
            scenario.workloads(store, floor, params),
            ids,
            turns=len(ids) * options.turns,
            rounds=options.repeats,
            progress=progress,
        )
    row = Row(
        group="in-memory",
        key=scenario.key,
        scenario=scenario.describe(options),
        metric="time per turn",
        unit="µs",
        ours=figures["ours"].us_per_turn,
        floor=figures["floor"].us_per_turn,
        target=_TARGETS.get(scenario.key),
    )
    return Measured([row], {side: asdict(value) for side, value in figures.items()})


async def _heap_bytes(fill: Callable[[], Awaitable[object]]) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = await fill()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept  # measured while alive, freed after
    return after - before


async def heap_per_session(options: BenchOptions) -> Measured:
    """Python heap bytes per session of ``history`` messages: the store beside a dict of lists.
    Each side builds its own messages, so the messages count on both."""
    count = max(options.sessions)

    async def fill(backend: Backend) -> Backend:
        for index in range(count):
            messages = conversation(options.history, options.message_bytes)
            await backend.append(f"s-{index}", messages, ttl=TTL_SECONDS)
        return backend

    async with InMemoryStateStore(max_sessions=None) as store:
        ours = await _heap_bytes(lambda: fill(store))
    floor = await _heap_bytes(lambda: fill(DictOfListsFloor()))
    row = Row(
        group="in-memory",
        key="heap",
        scenario=f"heap: {options.history} messages of {options.message_bytes} B",
        metric="per session",
        unit="B",
        ours=ours / count,
        floor=floor / count,
    )
    return Measured([row], {"sessions": count, "ours_bytes": ours, "floor_bytes": floor})
