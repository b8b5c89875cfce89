"""The figures a run produces: one :class:`Row` per comparison, its :class:`Target`, the whole
:class:`Report`, and the JSON form of all of it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from chatstate.bench.measure import ConcurrentFigures, Progress

Group: TypeAlias = Literal["in-memory", "sqlite", "redis"]
"""Which suite a row or a scenario belongs to: one table each."""

FORMAT_VERSION = 1
"""Bumped when the JSON layout changes incompatibly."""


@dataclass(frozen=True, slots=True)
class Target:
    """A target of docs/benchmarks.md: a bound on the ratio ours/floor, on ours itself, or on
    the excess ours - floor (what ours adds to the floor's work)."""

    on: Literal["ratio", "ours", "excess"]
    at_least: bool
    bound: float

    @classmethod
    def ratio_at_least(cls, bound: float) -> Target:
        return cls("ratio", True, bound)

    @classmethod
    def ratio_at_most(cls, bound: float) -> Target:
        return cls("ratio", False, bound)

    @classmethod
    def ours_at_most(cls, bound: float) -> Target:
        return cls("ours", False, bound)

    @classmethod
    def excess_at_most(cls, bound: float) -> Target:
        return cls("excess", False, bound)

    def met(self, ours: float, ratio: float | None) -> bool | None:
        if self.on == "excess":
            value = None if not ratio else ours - ours / ratio
        else:
            value = ours if self.on == "ours" else ratio
        if value is None:
            return None
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self, unit: str) -> str:
        sign = ">=" if self.at_least else "<="
        if self.on == "ratio":
            return f"{sign} {self.bound:g} x floor"
        if self.on == "excess":
            return f"ours - floor {sign} {self.bound:g} {unit}"
        return f"ours {sign} {self.bound:,.0f} {unit}"


# Which floor a Redis row compares with, for the table, the JSON and the plot: one of the two
# hand-written ones (see chatstate.bench.redis_floors), or the same store's plain load (the token
# window scenarios) or unencrypted (encrypted loads).
PYDANTIC_FLOOR = "pydantic floor"
NAIVE_DICT_FLOOR = "naive dict floor"
PLAIN_LOAD = "plain load"
UNENCRYPTED = "unencrypted"

# The targets of docs/benchmarks.md ('Targets').
TURN_THROUGHPUT_ONE_SESSION = Target.ratio_at_least(1.0)
TURN_THROUGHPUT_CONCURRENT = Target.ratio_at_least(5.0)
"""At 100 sessions and more."""
NAIVE_TURN_THROUGHPUT_ONE_SESSION = Target.ratio_at_least(1.0)
"""Against the naive dict floor."""
NAIVE_TURN_THROUGHPUT_CONCURRENT = Target.ratio_at_least(5.0)
"""Against the naive dict floor, at 100 sessions and more."""
LOAD_P99_CONCURRENT = Target.ratio_at_most(0.2)
"""At 1,000 sessions and more (looser than the 0.1 that docs/benchmarks.md sets as the target)."""
MEMORY_LOAD = Target.ratio_at_most(3.0)
PIPELINE_OVERHEAD_US = Target.ours_at_most(25.0)
STREAM_CHUNK_OVERHEAD_US = Target.excess_at_most(5.0)
"""What a streamed turn adds per chunk to the provider's own stream."""
TOOL_ROUND_OVERHEAD_US = Target.excess_at_most(50.0)
"""What the tool loop adds per round to the model and tool calls."""
STORED_OVERHEAD_BYTES = 64
COMPRESSED_FRACTION = 0.6


def stored_bytes_target(payload: int) -> Target:
    """Stored bytes per message: at most the payload plus 64 bytes."""
    return Target.ours_at_most(payload + STORED_OVERHEAD_BYTES)


def compressed_bytes_target(payload: int) -> Target:
    """With compression, English text: at most 0.6 x the payload."""
    return Target.ours_at_most(COMPRESSED_FRACTION * payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One comparison: a figure of ours beside the same figure of its floor, from the same run."""

    group: Group
    key: str
    """The scenario's name in the report (``"turn"``, ``"load"``, ...)."""
    scenario: str
    """What it does, for people."""
    metric: str
    unit: str
    ours: float
    floor: float
    sessions: int | None = None
    variant: str = ""
    """Set when "ours" is a variant of the store (``"auto_pipeline=False"``)."""
    target: Target | None = None
    round_trips: tuple[float, float] | None = None
    """Round trips per operation, ours and floor, counted at the connection (Redis only)."""
    floor_name: str = ""
    """Which floor, where a suite has more than one (Redis: :data:`PYDANTIC_FLOOR`,
    :data:`NAIVE_DICT_FLOOR`, ...); empty: the suite's one floor."""

    @property
    def ratio(self) -> float | None:
        """ours / floor (None if the floor is 0)."""
        return self.ours / self.floor if self.floor else None

    @property
    def ok(self) -> bool | None:
        """Whether the target is met; None without a target."""
        return None if self.target is None else self.target.met(self.ours, self.ratio)

    @property
    def label(self) -> str:
        """The scenario, its sessions, its variant and its floor, for people."""
        parts = [self.scenario]
        if self.sessions is not None:
            parts.append(f"{self.sessions:,} session{'s' if self.sessions != 1 else ''}")
        if self.variant:
            parts.append(self.variant)
        if self.floor_name:
            parts.append(f"beside: {self.floor_name}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "key": self.key,
            "scenario": self.scenario,
            "sessions": self.sessions,
            "variant": self.variant,
            "metric": self.metric,
            "unit": self.unit,
            "ours": self.ours,
            "floor": self.floor,
            "floor_name": self.floor_name,
            "ratio": self.ratio,
            "target": None if self.target is None else self.target.describe(self.unit),
            "ok": self.ok,
            "round_trips_per_op": None
            if self.round_trips is None
            else {"ours": self.round_trips[0], "floor": self.round_trips[1]},
        }


@dataclass(frozen=True, slots=True)
class Measured:
    """What one scenario gives: its rows for the table, and every figure behind them."""

    rows: list[Row]
    details: dict[str, Any]


@dataclass(slots=True)
class Report:
    """Everything a run measured, and where and how."""

    environment: dict[str, Any]
    options: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per group and scenario, every side's figures and samples (JSON values)."""
    notes: list[str] = field(default_factory=list)

    def add(self, group: str, key: str, measured: Measured) -> None:
        """Take in what one scenario measured."""
        self.rows.extend(measured.rows)
        self.details.setdefault(group, {})[key] = measured.details

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "environment": self.environment,
            "options": self.options,
            "results": [row.to_json() for row in self.rows],
            "scenarios": self.details,
            "notes": self.notes,
        }

    def write_json(self, path: Path) -> None:
        """Write every figure to ``path``."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One scenario of a suite, not yet run."""

    group: Group
    key: str
    """The scenario's name in the report's details."""
    name: str
    """What the progress display shows while it runs."""
    run: Callable[[Progress], Awaitable[Measured]]


SideMetric: TypeAlias = tuple[str, str, Callable[[ConcurrentFigures], float], "Target | None"]
"""A row's metric, unit, how to read it from a side's figures, and its target (for ours)."""


def side_rows(
    group: Group,
    scenario: Any,
    sessions: int,
    options: Any,
    figures: dict[str, ConcurrentFigures],
    metrics: Callable[[str], Iterable[SideMetric]],
    *,
    round_trips: bool = False,
    floor_name: str = "",
) -> list[Row]:
    """A row for each metric of each side (``"ours"``, and the variants and other stores run in
    the same rounds) beside the figure of the side ``"floor"``, named ``floor_name``; a target
    holds for ours only."""
    floor = figures["floor"]
    return [
        Row(
            group=group,
            key=scenario.key,
            scenario=scenario.describe(options),
            sessions=sessions,
            variant="" if side == "ours" else side,
            metric=metric,
            unit=unit,
            ours=pick(figures[side]),
            floor=pick(floor),
            target=target if side == "ours" else None,
            round_trips=(figures[side].round_trips_per_op, floor.round_trips_per_op)
            if round_trips
            else None,
            floor_name=floor_name,
        )
        for side in figures
        if side != "floor"
        for metric, unit, pick, target in metrics(side)
    ]


def concurrent_details(
    sessions: int, turns: int, figures: dict[str, ConcurrentFigures]
) -> dict[str, Any]:
    """What the JSON report keeps of a concurrent scenario: every side's figures."""
    return {
        "sessions": sessions,
        "turns_per_session": turns,
        "sides": {side: asdict(value) for side, value in figures.items()},
    }
