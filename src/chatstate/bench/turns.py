"""Streamed and tool turns: what the pipeline adds per chunk and per tool round, beside the same
provider (and tool) called directly, on the in-memory store.

A cost per chunk or per round is a slope: the same turn with few and with many chunks (or rounds),
the difference divided by the chunks (or rounds) between them, so that what a turn costs once
(the load, the append, the lock) drops out. Each figure is the best of many short batches (ten
per ``--repeats``, three in a quick run, alternating sides), which a busy machine disturbs
least. Both sides run the same ScriptedProvider; the target is on the difference, ours - floor:
what the pipeline adds, excluding the provider and the tools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import anyio.lowlevel

from chatstate.bench.measure import BatchFigures, Progress, compare_batches
from chatstate.bench.options import BenchOptions
from chatstate.bench.results import (
    STREAM_CHUNK_OVERHEAD_US,
    TOOL_ROUND_OVERHEAD_US,
    Measured,
    PlanItem,
    Row,
    Target,
)
from chatstate.bench.workload import Workload
from chatstate.messages import Message, ToolCall
from chatstate.middleware import ProviderMiddleware, StateMiddleware, StateMiddlewareConfig
from chatstate.pipeline import Pipeline
from chatstate.providers.scripted import ScriptedProvider
from chatstate.stores.memory import InMemoryStateStore
from chatstate.tools import Tool

SHORT, LONG = 1, 201
"""Chunks of the short and the long streamed reply."""
FEW, MANY = 0, 8
"""Tool rounds of the short and the long tool turn."""
BATCH_TURNS = 50
"""Turns a batch: short, so that the best of many is one that nothing else interrupted."""
_USER = Message(role="user", content="What is the weather like?")


def plan(options: BenchOptions) -> list[PlanItem]:
    """The streamed and tool turn scenarios, in the order they run."""
    return [
        PlanItem(
            group="in-memory",
            key="stream_chunk",
            name="in-memory: streamed turn, per chunk",
            run=lambda progress: stream_chunks(options, progress, io=False),
        ),
        PlanItem(
            group="in-memory",
            key="stream_chunk_io",
            name="in-memory: streamed turn, per chunk, a checkpoint per chunk",
            run=lambda progress: stream_chunks(options, progress, io=True),
        ),
        PlanItem(
            group="in-memory",
            key="tool_round",
            name="in-memory: tool turn, per round",
            run=lambda progress: tool_rounds(options, progress),
        ),
    ]


class _Words(ScriptedProvider):
    """Streams a reply of ``chunks`` words; with ``io``, it yields to the event loop before each
    chunk, as a provider reading chunks off a socket does."""

    def __init__(self, chunks: int, *, io: bool) -> None:
        super().__init__(lambda messages: "word " * chunks, keep_calls=1)
        self._io = io

    async def stream(self, messages: Sequence[Message], **options: Any) -> Any:
        async with contextlib.aclosing(super().stream(messages, **options)) as chunks:
            async for chunk in chunks:
                if self._io:
                    await anyio.lowlevel.checkpoint()
                yield chunk


def _pipeline(provider: Any, store: InMemoryStateStore, tools: Sequence[Tool] = ()) -> Pipeline:
    config = StateMiddlewareConfig(max_messages=20)
    return Pipeline(StateMiddleware(store, config), ProviderMiddleware(provider, tools=tools))


def _streamed(pipe: Pipeline) -> Workload:
    async def step(session_id: str) -> object:
        async with pipe.stream(session_id, _USER) as turn:
            async for _ in turn:
                pass
        return turn.result

    return Workload((("turn", step),))


def _direct(provider: _Words) -> Workload:
    async def step(session_id: str) -> object:
        async for _ in provider.stream([_USER]):
            pass
        return None

    return Workload((("turn", step),))


async def stream_chunks(options: BenchOptions, progress: Progress, *, io: bool) -> Measured:
    """Microseconds per chunk of a streamed turn, ours beside ``provider.stream`` alone."""
    ids = [f"stream-{index}" for index in range(100)]
    short, long = _Words(SHORT, io=io), _Words(LONG, io=io)
    async with InMemoryStateStore(max_sessions=None) as store:
        async with _pipeline(short, store) as quick, _pipeline(long, store) as slow:
            sides = {
                "ours_short": _streamed(quick),
                "ours_long": _streamed(slow),
                "floor_short": _direct(short),
                "floor_long": _direct(long),
            }
            figures = await _best_batches(sides, ids, options, progress)
    return _slope_row(
        figures,
        key="stream_chunk_io" if io else "stream_chunk",
        scenario="streamed turn"
        + (", a checkpoint per chunk" if io else "")
        + ", beside provider.stream alone",
        metric="per chunk",
        span=LONG - SHORT,
        target=STREAM_CHUNK_OVERHEAD_US,
    )


def _tool_model(rounds: int) -> ScriptedProvider:
    calling = Message(role="assistant", content=None, tool_calls=(ToolCall(id="c", name="ping"),))

    def reply(messages: Sequence[Message]) -> Message:
        asked = 0  # the results of this turn: those after its user message
        for message in reversed(messages):
            if message.role == "user":
                break
            asked += message.role == "tool"
        return calling if asked < rounds else Message(role="assistant", content="done")

    return ScriptedProvider(reply, keep_calls=1)


async def _ping() -> str:
    return "pong"


def _hand_loop(provider: ScriptedProvider, tools: dict[str, Tool]) -> Workload:
    """The floor: the same rounds written by hand, with no pipeline, store or task group."""
    schemas = [tool.schema() for tool in tools.values()]

    async def step(session_id: str) -> object:
        messages = [_USER]
        while True:
            reply = await provider.complete(messages, tools=schemas)
            if not reply.tool_calls:
                return reply
            results = [
                Message(
                    role="tool",
                    content=await tools[call.name].function(**call.args),
                    tool_call_id=call.id,
                )
                for call in reply.tool_calls
            ]
            messages = [*messages, reply, *results]

    return Workload((("turn", step),))


def _executed(pipe: Pipeline) -> Workload:
    async def step(session_id: str) -> object:
        return await pipe.execute(session_id, _USER)

    return Workload((("turn", step),))


async def tool_rounds(options: BenchOptions, progress: Progress) -> Measured:
    """Microseconds per tool round of a turn, ours beside the same rounds by hand."""
    ids = [f"tools-{index}" for index in range(100)]
    ping = Tool(name="ping", function=_ping)
    few, many = _tool_model(FEW), _tool_model(MANY)
    async with InMemoryStateStore(max_sessions=None) as store:
        async with _pipeline(few, store, [ping]) as quick, _pipeline(many, store, [ping]) as slow:
            sides = {
                "ours_short": _executed(quick),
                "ours_long": _executed(slow),
                "floor_short": _hand_loop(few, {"ping": ping}),
                "floor_long": _hand_loop(many, {"ping": ping}),
            }
            figures = await _best_batches(sides, ids, options, progress)
    return _slope_row(
        figures,
        key="tool_round",
        scenario="tool turn, one call a round, beside the loop by hand",
        metric="per round",
        span=MANY - FEW,
        target=TOOL_ROUND_OVERHEAD_US,
    )


async def _best_batches(
    sides: dict[str, Workload], ids: list[str], options: BenchOptions, progress: Progress
) -> dict[str, BatchFigures]:
    """Many short batches of every side in turn; a side's figure is its best batch. A slope is
    the difference of two such figures, which one preempted batch of the short side would make
    negative if medians of a few long batches were taken on a busy machine."""
    batches = 3 if options.quick else 10 * options.repeats  # quick: a smoke run
    figures = await compare_batches(
        sides, ids, turns=BATCH_TURNS, rounds=batches, progress=progress
    )
    return {side: BatchFigures(min(value.rounds), value.rounds) for side, value in figures.items()}


def _slope_row(
    figures: dict[str, BatchFigures],
    *,
    key: str,
    scenario: str,
    metric: str,
    span: int,
    target: Target,
) -> Measured:
    def slope(side: str) -> float:
        long, short = figures[f"{side}_long"].us_per_turn, figures[f"{side}_short"].us_per_turn
        return (long - short) / span

    row = Row(
        group="in-memory",
        key=key,
        scenario=scenario,
        metric=metric,
        unit="µs",
        ours=slope("ours"),
        floor=slope("floor"),
        target=target,
    )
    return Measured([row], {side: asdict(value) for side, value in figures.items()})
