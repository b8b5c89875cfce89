"""Runs the suites: the in-memory scenarios always, the Redis ones when a server is given."""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any

import pydantic

import chatstate
from chatstate.bench import encryption, integrations, memory, scenarios, sqlite, turns
from chatstate.bench.measure import NoProgress, Progress
from chatstate.bench.options import BenchError, BenchOptions
from chatstate.bench.results import Report, Row
from chatstate.errors import ChatStateError


def environment() -> dict[str, Any]:
    """Where and when the figures were measured."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "chatstate": chatstate.__version__,
        "pydantic": pydantic.VERSION,
        "sqlite": sqlite3.sqlite_version,
        "redis_server": None,
        "postgres_server": None,
    }


async def run_suite(
    options: BenchOptions,
    *,
    redis_url: str | None = None,
    postgres_url: str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Run every in-memory and SQLite scenario and, with ``redis_url``, every Redis scenario
    against that server, with ``postgres_url`` the PostgreSQL turn against that database (raises
    :class:`~chatstate.bench.options.BenchError` when a server cannot be reached). The SQLite
    scenarios run on files in a temporary directory, removed at the end; the PostgreSQL ones in
    schemas dropped at the end."""
    progress = progress if progress is not None else NoProgress()
    report = Report(environment=environment(), options=options.to_json())
    failures: tuple[type[Exception], ...] = (ChatStateError, OSError, *sqlite.FAILURES)
    async with contextlib.AsyncExitStack() as stack:
        redis_items = []
        redis_store = None
        if redis_url is not None:
            from chatstate.bench import redis  # needs redis-py: imported only when asked for

            # Connect first: an unreachable server fails the run before minutes of measuring.
            bench = await stack.enter_async_context(redis.RedisBench.open(redis_url, options))
            report.environment.update(bench.environment())
            # The framework integrations beside the frameworks' own Redis implementations.
            redis_items = [*redis.plan(bench, options), *integrations.plan(bench, options)]
            report.notes.extend(integrations.missing_notes())
            redis_store = bench.ours
            failures += redis.FAILURES
        postgres_items = []
        if postgres_url is not None:
            from chatstate.bench import postgres  # needs asyncpg: imported only when asked for

            database = await stack.enter_async_context(postgres.PostgresBench.open(postgres_url))
            report.environment.update(database.environment())
            postgres_items = postgres.plan(database, options)
            failures += postgres.FAILURES
        try:
            files = await stack.enter_async_context(sqlite.SQLiteBench.open())
        except failures as exc:
            raise BenchError(f"cannot create the SQLite files of the run: {exc}") from exc
        items = [
            *memory.plan(options),
            *turns.plan(options),
            *sqlite.plan(files, options, redis=redis_store),
            *postgres_items,
            *redis_items,
        ]
        progress.begin(len(items))
        for item in items:
            progress.scenario(item.name)
            try:
                measured = await item.run(progress)
            except failures as exc:  # a server gone, a store error: say where, not a traceback
                raise BenchError(f"{item.name} failed: {type(exc).__name__}: {exc}") from exc
            report.add(item.group, item.key, measured)
    report.notes.extend(_bounding_notes(report.rows, options))
    report.notes.extend(sqlite.latency_notes(report.rows, options))
    if not encryption.available():
        report.notes.append(encryption.MISSING_NOTE)
    return report


def _bounding_notes(rows: list[Row], options: BenchOptions) -> list[str]:
    """How much a bounded load saves over loading a long history, per store."""
    notes = []
    for group in ("in-memory", "redis"):
        # Each store has one row of each of these two scenarios: a time or a throughput.
        found = {row.key: row.ours for row in rows if row.group == group}
        bounded = found.get(scenarios.LOAD.key)
        unbounded = found.get(scenarios.LONG_HISTORY.key)
        if not bounded or not unbounded:
            continue
        # In-memory rows are times (lower is better), Redis rows throughputs (higher is better).
        factor = unbounded / bounded if group == "in-memory" else bounded / unbounded
        notes.append(
            f"{group}: loading all of {scenarios.LONG_HISTORY.seed_count(options):,} messages "
            f"costs {factor:,.1f} x a bounded load of {options.history}: why max_messages matters"
        )
    return notes
