"""A workload of many sessions running turns while a test breaks the servers under it, and the
audit after it: every acknowledged turn present, once, in order.

Each session loads its recent history, then appends a turn (a question and its answer) with a
write id of its own. A write that fails is retried with the same write id, as documented, until
it is acknowledged or the workload ends; only an acknowledged turn counts. So a turn found twice
is a duplicate the write ids failed to stop, and an acknowledged turn missing is a loss.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from chatstate import Message, RedisStateStore, StoreError


def turn(session: str, index: int) -> list[Message]:
    return [
        Message(role="user", content=f"{session} question {index}"),
        Message(role="assistant", content=f"{session} answer {index}"),
    ]


@dataclass
class Outcome:
    acknowledged: dict[str, list[int]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    """Failed calls by error class (each retried)."""
    examples: dict[str, str] = field(default_factory=dict)
    """The last message of each error class."""
    after_fault: int = 0
    """Turns acknowledged after ``fault`` returned: the workload went on."""
    resumed: set[str] = field(default_factory=set)
    """Sessions with a turn acknowledged after ``fault`` returned."""
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0

    @property
    def total(self) -> int:
        return sum(len(indexes) for indexes in self.acknowledged.values())

    def summary(self) -> str:
        return (
            f"{self.total} acknowledged turns, {self.lost} lost, {self.duplicated} duplicated, "
            f"{self.after_fault} after the fault; errors {self.errors}"
        )


async def run(
    store: RedisStateStore,
    *,
    sessions: int,
    fault: Callable[[], Awaitable[None]],
    after: float = 1.0,
    deadline: float = 60.0,
) -> Outcome:
    """Run turns on ``sessions`` sessions; start ``fault`` once they are going; go on ``after``
    seconds once it returned; then audit every session."""
    outcome = Outcome()
    done = asyncio.Event()
    stop_at = time.monotonic() + deadline
    fault_over = False

    async def session(name: str) -> None:
        acknowledged = outcome.acknowledged.setdefault(name, [])
        index = 0
        while not done.is_set() and time.monotonic() < stop_at:
            write_id = f"{name}-turn-{index}"
            try:
                await store.load(name, limit=6)
            except StoreError as exc:
                _count(outcome, exc)
            while time.monotonic() < stop_at:
                try:
                    await store.append(name, turn(name, index), write_id=write_id)
                except StoreError as exc:
                    _count(outcome, exc)
                    await asyncio.sleep(0.02)
                    continue
                acknowledged.append(index)
                if fault_over:
                    outcome.after_fault += 1
                    outcome.resumed.add(name)
                break
            index += 1

    async def breaker() -> None:
        nonlocal fault_over
        await asyncio.sleep(0.5)
        await fault()
        fault_over = True
        await asyncio.sleep(after)
        done.set()

    await asyncio.gather(breaker(), *(session(f"s{n}") for n in range(sessions)))
    await audit(store, outcome)
    return outcome


def _count(outcome: Outcome, exc: Exception) -> None:
    kind = type(exc).__name__
    outcome.errors[kind] = outcome.errors.get(kind, 0) + 1
    outcome.examples[kind] = str(exc)


async def audit(store: RedisStateStore, outcome: Outcome) -> None:
    for name, indexes in outcome.acknowledged.items():
        for attempt in range(50):
            try:
                history = await store.load(name)
                break
            except StoreError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        questions = [m.text for m in history if m.role == "user"]
        found = [int(text.rsplit(" ", 1)[1]) for text in questions]
        outcome.duplicated += len(found) - len(set(found))
        outcome.out_of_order += sum(1 for a, b in itertools.pairwise(found) if a >= b)
        outcome.lost += len(set(indexes) - set(found))
