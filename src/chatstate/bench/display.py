"""What a person sees: a rich progress bar while the suite runs, tables of the figures after.
Needs rich (the ``bench`` extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as _RichProgress
from rich.table import Table

from chatstate.bench.results import Report, Row

_TITLES = {
    "in-memory": "In-memory store beside a dict of lists (same process; medians over rounds)",
    "sqlite": "SQLite store beside the same SQL by hand with sqlite3 (same thread hop, own file)",
    "postgres": "PostgreSQL store beside the same SQL by hand with asyncpg, one statement per "
    "step (same server, pools of the same size)",
    "redis": "Redis store beside hand-written redis.asyncio calls (same server, same pool; "
    "'beside' names each row's floor)",
}


class RichProgress:
    """A progress bar, one step per scenario (see :func:`rich_progress`)."""

    def __init__(self, bar: _RichProgress) -> None:
        self._bar = bar
        self._task: TaskID | None = None
        self._name = ""
        self._done = 0

    def begin(self, total: int) -> None:
        self._task = self._bar.add_task("starting", total=total)

    def scenario(self, name: str) -> None:
        if self._name:
            self._done += 1
        self._name = escape(name)
        self._show(self._name)

    def detail(self, text: str) -> None:
        self._show(f"{self._name} [dim]({escape(text)})[/dim]")

    def _show(self, description: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=description, completed=self._done)


@contextlib.contextmanager
def rich_progress(console: Console) -> Iterator[RichProgress]:
    """A progress bar on ``console`` (stderr) while the block runs; gone when it ends."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    extra = (MofNCompleteColumn(), TimeElapsedColumn())
    with _RichProgress(*columns, *extra, console=console, transient=True) as bar:
        yield RichProgress(bar)


def _number(value: float, unit: str) -> str:
    if unit == "B":  # a byte over a bound must show: 264.4 is not 264
        return f"{value:,.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _trips(per_op: float) -> str:
    # Coalesced writes carry many operations each: 0.004 must not print as 0.00.
    return f"{per_op:.2f}" if per_op >= 0.1 or per_op == 0 else f"{per_op:.1g}"


def _ok(row: Row) -> str:
    return {True: "[green]yes[/green]", False: "[bold red]NO[/bold red]", None: ""}[row.ok]


def table(report: Report, group: str) -> Table | None:
    """The rows of one group (``"in-memory"`` or ``"redis"``) as a table; None if it has none."""
    rows = [row for row in report.rows if row.group == group]
    if not rows:
        return None
    by_sessions = any(row.sessions is not None for row in rows)
    counted = any(row.round_trips is not None for row in rows)
    named = any(row.floor_name for row in rows)  # a suite with more than one floor
    result = Table(title=_TITLES[group], title_justify="left")
    result.add_column("scenario", overflow="fold")
    if by_sessions:
        result.add_column("sessions", justify="right")
    result.add_column("metric")
    if named:
        result.add_column("beside")
    for name in ("ours", "floor", "ratio"):
        result.add_column(name, justify="right")
    result.add_column("target")
    result.add_column("ok", justify="center")
    if counted:
        result.add_column("round trips/op\nours / floor", justify="right")
    for row in rows:
        cells = [escape(f"{row.scenario}, {row.variant}" if row.variant else row.scenario)]
        if by_sessions:
            cells.append("" if row.sessions is None else f"{row.sessions:,}")
        cells.append(f"{row.metric} ({row.unit})")
        if named:
            cells.append(escape(row.floor_name))
        cells += [
            _number(row.ours, row.unit),
            _number(row.floor, row.unit),
            "" if row.ratio is None else f"{row.ratio:.2f} x",
            "" if row.target is None else escape(row.target.describe(row.unit)),
            _ok(row),
        ]
        if counted:
            trips = row.round_trips
            cells.append("" if trips is None else f"{_trips(trips[0])} / {_trips(trips[1])}")
        result.add_row(*cells)
    return result


def render(report: Report, console: Console) -> None:
    """Print the tables, which targets were missed, and the notes."""
    for group in _TITLES:
        shown = table(report, group)
        if shown is not None:
            console.print(shown)
    targeted = [row for row in report.rows if row.ok is not None]
    missed = [row for row in targeted if not row.ok]
    console.print(f"targets met: {len(targeted) - len(missed)} of {len(targeted)}")
    for row in missed:
        console.print(f"  missed: {escape(row.label)}: {row.metric}")
    for note in report.notes:
        console.print(f"note: {escape(note)}")
