"""The PNG plot of a run, drawn with matplotlib's Agg backend (no display needed). Needs
matplotlib (the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from chatstate.bench.results import NAIVE_DICT_FLOOR, PYDANTIC_FLOOR, Report, Row

_OURS, _PLAIN, _FLOOR, _NAIVE = "tab:blue", "tab:green", "tab:gray", "tab:orange"


def write_plot(report: Report, path: Path) -> str:
    """Draw the run to ``path`` (PNG); returns what the plot shows, for the report's notes.

    With Redis figures: turn throughput (ours beside the pydantic and the naive dict floor) and load
    p50/p99 latency (ours beside the pydantic floor) against concurrent sessions (log x axis).
    Without: the in-memory time per turn of each scenario.
    """
    turn_rows = [row for row in report.rows if row.group == "redis" and row.key == "turn"]
    if turn_rows:
        figure = _redis_figure(turn_rows)
        shown = "Redis turn throughput and load latency against concurrent sessions"
    else:
        figure = _memory_figure(
            [row for row in report.rows if row.group == "in-memory" and row.unit == "µs"]
        )
        shown = "in-memory time per turn by scenario (no Redis in this run)"
    figure.suptitle(f"chatstate bench, {report.environment.get('date', '')}")
    FigureCanvasAgg(figure)  # draws with Agg whatever backend matplotlib is configured with
    figure.savefig(path, format="png", dpi=120)
    return shown


def _series(
    rows: list[Row], metric: str, variant: str = "", floor_name: str = PYDANTIC_FLOOR
) -> tuple[list[int], list[Row]]:
    chosen = sorted(
        (
            row
            for row in rows
            if row.metric == metric and row.variant == variant and row.floor_name == floor_name
        ),
        key=lambda row: row.sessions or 0,
    )
    return [row.sessions or 0 for row in chosen], chosen


def _redis_figure(rows: list[Row]) -> Figure:
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    throughput, latency = figure.subplots(1, 2)
    x, ours = _series(rows, "throughput")
    throughput.plot(x, [r.ours for r in ours], "o-", color=_OURS, label="ours")
    x_plain, plain = _series(rows, "throughput", "auto_pipeline=False")
    if plain:
        throughput.plot(
            x_plain, [r.ours for r in plain], "s-", color=_PLAIN, label="ours, auto_pipeline=False"
        )
    throughput.plot(x, [r.floor for r in ours], "o-", color=_FLOOR, label=PYDANTIC_FLOOR)
    x_naive, naive = _series(rows, "throughput", floor_name=NAIVE_DICT_FLOOR)
    if naive:
        throughput.plot(
            x_naive, [r.floor for r in naive], "o--", color=_NAIVE, label=NAIVE_DICT_FLOOR
        )
    throughput.set_ylim(bottom=0)
    title = f"turn throughput ({ours[0].scenario})" if ours else "turn throughput"
    _decorate(throughput, title, ours[0].unit if ours else "")
    for metric, style in (("load p50", "o-"), ("load p99", "^--")):
        x, figures = _series(rows, metric)
        name = metric.removeprefix("load ")
        latency.plot(x, [r.ours for r in figures], style, color=_OURS, label=f"ours {name}")
        latency.plot(
            x, [r.floor for r in figures], style, color=_FLOOR, label=f"{PYDANTIC_FLOOR} {name}"
        )
    latency.set_yscale("log")
    _decorate(latency, "load latency", "ms")
    return figure


def _decorate(axes: Axes, title: str, unit: str) -> None:
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ScalarFormatter())  # 1, 100, 1000 rather than powers of 10
    axes.set_xlabel("concurrent sessions")
    axes.set_ylabel(unit)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()


def _memory_figure(rows: list[Row]) -> Figure:
    figure = Figure(figsize=(10, 0.6 * len(rows) + 1.8), layout="constrained")
    axes = figure.subplots()
    positions = range(len(rows))
    height = 0.4
    axes.barh([p - height / 2 for p in positions], [r.ours for r in rows], height, label="ours")
    axes.barh(
        [p + height / 2 for p in positions],
        [r.floor for r in rows],
        height,
        color=_FLOOR,
        label="floor (dict of lists)",
    )
    axes.set_yticks(list(positions), [r.scenario for r in rows])
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("µs per turn (median)")
    axes.set_title("in-memory store: time per turn, ours beside its floor")
    axes.grid(True, axis="x", which="both", alpha=0.3)
    axes.legend()
    return figure
