"""The pipeline, its middlewares, summaries and the metric pollers on asyncio and on trio, through
anyio's pytest plugin (pytest-asyncio's auto mode hands these tests over: see conftest.py).

The in-memory store runs whole on both (the store core is anyio throughout); the Redis store runs
on asyncio alone, so its cases are not run on trio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest
import sniffio

from chatstate import (
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderMiddleware,
    ScriptedProvider,
    StateMiddleware,
    StateMiddlewareConfig,
)
from chatstate.metrics import Recorder
from chatstate.monitoring import AlertEvent, AlertMonitor, AlertRule, StateMetrics
from chatstate.summaries import SummaryConfig
from chatstate.testing import FakeClock

pytestmark = pytest.mark.anyio


def _memory() -> InMemoryStateStore:
    return InMemoryStateStore(sweep_interval=None)


async def test_each_backend_runs_on_itself(anyio_backend: str) -> None:
    assert sniffio.current_async_library() == anyio_backend


async def test_a_conversation_with_concurrent_turns(anyio_backend: str) -> None:
    libraries: set[str] = set()

    def reply(messages: Sequence[Message]) -> str:
        libraries.add(sniffio.current_async_library())
        return f"{len(messages)} messages"

    store = _memory()
    provider = ScriptedProvider(reply, latency=0)  # an anyio.sleep per call
    state = StateMiddleware(store, StateMiddlewareConfig(max_messages=6))
    async with Pipeline(state, ProviderMiddleware(provider, system_prompt="Be brief.")) as pipe:
        async with anyio.create_task_group() as group:
            for turn in range(10):
                for session in ("a", "b"):
                    group.start_soon(pipe.execute_with_session, session, "user", f"{turn}")
        result = await pipe.execute_with_session("a", "user", "last")
    assert libraries == {anyio_backend}
    assert result.response.text == "8 messages"  # the system prompt, 6 of history, the message
    for session in ("a", "b"):
        history = await store.load(session)
        assert len(history) == 6
        assert [message.role for message in history] == ["user", "assistant"] * 3  # whole turns


async def test_turns_of_one_session_are_serialised(anyio_backend: str) -> None:
    seen: list[int] = []

    async def reply(messages: Sequence[Message]) -> str:
        seen.append(len(messages) - 1)
        await anyio.lowlevel.checkpoint()  # another turn would run here, were it not locked
        return "ok"

    pipe = Pipeline(StateMiddleware(_memory()), ProviderMiddleware(ScriptedProvider(reply)))
    async with pipe, anyio.create_task_group() as group:
        for index in range(10):
            group.start_soon(pipe.execute_with_session, "s", "user", str(index))
    assert seen == list(range(0, 20, 2))


class _Recorded:
    """A summarizer that notes the library it ran on; ``hang`` makes it wait for ever."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.ran_on: list[str] = []
        self.started = anyio.Event()

    async def summarize(self, summary: str | None, messages: Sequence[Message]) -> str:
        self.ran_on.append(sniffio.current_async_library())
        self.started.set()
        if self.hang:
            await anyio.sleep_forever()
        return f"{len(messages)} messages folded"


def _summarising(summarizer: _Recorded, clock: FakeClock) -> StateMiddleware:
    summary = SummaryConfig(
        summarizer=summarizer, summarize_at=4, keep_recent=2, timeout=timedelta(seconds=10)
    )
    config = StateMiddlewareConfig(max_messages=10, summary=summary)
    return StateMiddleware(_memory(), config, clock=clock)


async def test_summaries_run_in_the_pipeline_block(anyio_backend: str) -> None:
    summarizer = _Recorded()
    state = _summarising(summarizer, FakeClock())
    async with Pipeline(state, ProviderMiddleware(ScriptedProvider())) as pipe:
        for turn in range(2):
            await pipe.execute_with_session("s", "user", f"turn {turn}")
    assert summarizer.ran_on == [anyio_backend]
    assert state.summaries is not None and (state.summaries.made, state.summaries.pending) == (1, 0)
    history, summary = await state.store.load_with_summary("s")  # type: ignore[attr-defined]
    assert summary.text == "2 messages folded" and len(history) == 2


async def test_a_summary_times_out_on_the_clock(anyio_backend: str) -> None:
    clock, summarizer = FakeClock(), _Recorded(hang=True)
    state = _summarising(summarizer, clock)
    async with Pipeline(state, ProviderMiddleware(ScriptedProvider())) as pipe:
        for turn in range(2):
            await pipe.execute_with_session("s", "user", f"turn {turn}")
        await clock.sleeping()
        clock.advance(10)
    assert state.summaries is not None and state.summaries.failed == 1


async def test_a_cancelled_block_leaves_no_summary_running(anyio_backend: str) -> None:
    summarizer = _Recorded(hang=True)
    state = _summarising(summarizer, FakeClock())
    with anyio.CancelScope() as scope:
        async with Pipeline(state, ProviderMiddleware(ScriptedProvider())) as pipe:
            for turn in range(2):
                await pipe.execute_with_session("s", "user", f"turn {turn}")
            await summarizer.started.wait()
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert state.summaries is not None and state.summaries.pending == 0


class _Sessions:
    """Answers ``metrics()`` with a number of active sessions the test sets (the in-memory
    store's own metrics() still sweeps with asyncio.sleep until the store core)."""

    active = 0

    async def metrics(self) -> StateMetrics:
        await anyio.lowlevel.checkpoint()
        return Recorder().metrics(
            active_sessions=self.active, messages=0, storage_used=0, expirations=0, evictions=0
        )


async def test_an_alert_monitor_polls_on_the_clock(anyio_backend: str) -> None:
    clock, store, events = FakeClock(), _Sessions(), []

    async def record(event: AlertEvent) -> None:
        events.append((event.firing, sniffio.current_async_library()))

    rules = [AlertRule.active_sessions_over(0)]
    async with AlertMonitor(store, rules, record, interval=timedelta(seconds=5), clock=clock):
        await clock.sleeping()
        store.active = 1
        clock.advance(5)
        await clock.sleeping()
    assert events == [(True, anyio_backend)]


async def test_the_in_memory_store_runs_whole_on_each_backend(anyio_backend: str) -> None:
    """Every operation of the store core, the sweep, a lease (with its renewer) and a fold."""
    clock = FakeClock()
    store = InMemoryStateStore(clock=clock, sweep_interval=1)
    turn = [Message(role="user", content="hi"), Message(role="assistant", content="hello")]
    assert await store.append("s", turn * 2, max_messages=3, ttl=10) == 3
    assert await store.load("s", limit=2) == turn
    async with store.lease("s", ttl=3, timeout=1):
        await clock.sleeping()  # the renewer waits on the store's clock
        clock.advance(1)  # a renewal comes due while the lease is held: it is renewed
        await clock.sleeping()

    async def fold(history: Sequence[Message], summary: Message | None) -> tuple[int, Message]:
        await anyio.lowlevel.checkpoint()
        return 2, Message(role="system", content="greetings")

    assert await store.compact("s", fold)
    assert await store.load_with_summary("s") == (
        turn[1:],
        Message(role="system", content="greetings"),
    )
    snapshot = await store.snapshot("s")
    assert snapshot is not None and snapshot.ttl == 9
    assert await store.restore("copy", replace(snapshot, ttl=60))
    clock.advance(10)
    assert await store.sweep() == 1  # s expired, not its copy
    metrics = await store.metrics()
    assert (metrics.active_sessions, metrics.loads) == (1, 3)  # a snapshot reads: a load
    await store.aclose()
