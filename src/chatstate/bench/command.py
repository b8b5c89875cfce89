"""``chatstate bench``: the command-line face of the benchmark suite."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import sys
from pathlib import Path

from chatstate._checks import redact_url
from chatstate.bench.options import BenchError, BenchOptions

HELP = (
    "measure chatstate beside its floors (in-memory, SQLite; Redis with --redis or "
    "--redis-server; PostgreSQL with --postgres or --postgres-server)"
)

DESCRIPTION = """\
Measure chatstate side by side with its floor, in the same run, in alternating rounds: the
in-memory store beside a plain dict of lists, the SQLite store (on files in a temporary directory)
beside the same SQL written by hand with sqlite3 and, with --redis or --redis-server, the Redis
store beside the same commands written by hand with redis.asyncio on the same connection pool
(the pydantic floor and, for the turn, also the naive dict floor, which keeps plain dicts);
with --postgres or --postgres-server, the PostgreSQL turn beside the same SQL by hand with
asyncpg, one statement per step; and what encryption (encryption=) adds to a load, where
cryptography is installed. Prints a table of ours, floor, ratio (ours / floor) and the targets of
docs/benchmarks.md. Exit status: 0 when the suite ran (a missed target is a finding, not a
failure), 1 when it could not run, 2 for bad options or a missing extra.

  chatstate bench --quick                        a smoke run, under 30 seconds
  chatstate bench --redis-server --postgres-server --json bench.json --plot bench.png
  chatstate bench --redis redis://localhost:6379/0   on a Redis of your own (plain TCP)
"""

_EXTRA_HINT = 'pip install "chatstate[bench]"'
_DEFAULTS = BenchOptions()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _levels(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return tuple(sorted({_positive(part) for part in parts}))


def _redis_url(text: str) -> str:
    if not text.startswith("redis://"):
        raise argparse.ArgumentTypeError(
            f"expected a redis://host:port/db URL, got {redact_url(text)!r} (round trips are "
            "counted on plain TCP connections)"
        )
    return text


def _postgres_url(text: str) -> str:
    if not text.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError(
            f"expected a postgresql://user@host:port/db URL, got {redact_url(text)!r}"
        )
    return text


def _output(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        # Checked now, not after minutes of measuring.
        raise argparse.ArgumentTypeError(f"no such directory: {str(path.parent)!r}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chatstate bench``."""
    server = parser.add_mutually_exclusive_group()
    server.add_argument(
        "--redis",
        metavar="URL",
        type=_redis_url,
        help="also run the Redis scenarios on this server",
    )
    server.add_argument(
        "--redis-server",
        action="store_true",
        help="also run the Redis scenarios on a throw-away local redis-server (a free port, "
        "stopped afterwards)",
    )
    server.add_argument(
        "--redis-cluster",
        action="store_true",
        help="instead, the Redis turn on throw-away local servers: one node with a replica and "
        "a 3 + 3 cluster, each with the default durability and durability=replicas",
    )
    database = parser.add_mutually_exclusive_group()
    database.add_argument(
        "--postgres",
        metavar="URL",
        type=_postgres_url,
        help="also run the PostgreSQL turn in this database (in schemas of its own, dropped "
        "at the end)",
    )
    database.add_argument(
        "--postgres-server",
        action="store_true",
        help="also run the PostgreSQL turn on a throw-away server started with initdb (a free "
        "port, fsync off, stopped afterwards)",
    )
    parser.add_argument(
        "--sessions",
        metavar="N,N,...",
        type=_levels,
        default=_DEFAULTS.sessions,
        help="concurrent sessions of the Redis turn scenario (default: 1,100,1000); in-memory "
        "scenarios cycle through the largest number of sessions",
    )
    parser.add_argument(
        "--turns", type=_positive, help="turns per session and round (default 20; quick: 3)"
    )
    parser.add_argument(
        "--history",
        type=_positive,
        default=_DEFAULTS.history,
        help="messages kept and loaded per session (default: %(default)s)",
    )
    parser.add_argument(
        "--message-bytes",
        type=_positive,
        default=_DEFAULTS.message_bytes,
        help="size of each message's text (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=_positive, help="measured rounds per side (default 3; quick: 1)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: few turns, one round (under 30 s)"
    )
    parser.add_argument(
        "--max-connections",
        type=_positive,
        default=_DEFAULTS.max_connections,
        help="Redis connection pool size, shared by both sides (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="PATH", type=_output, help="write every figure here")
    parser.add_argument("--plot", metavar="PATH", type=_output, help="draw a PNG plot here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _missing_extra(args: argparse.Namespace) -> str | None:
    needed = ["rich"]
    if args.redis or args.redis_server or args.redis_cluster:
        needed.append("redis")
    if args.postgres or args.postgres_server:
        needed.append("asyncpg")
    if args.plot:
        needed.append("matplotlib")
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``chatstate bench`` with parsed ``args``; returns the exit status."""
    missing = _missing_extra(args)
    if missing is not None:
        print(
            f"chatstate bench: error: {missing} is not installed; the benchmarks need the bench "
            f"extra: {_EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
    # Imported only now that rich (and, where asked for, redis and matplotlib) are known to be
    # there: the core install runs without them.
    from rich.console import Console

    from chatstate.bench.display import render, rich_progress
    from chatstate.bench.measure import NoProgress, Progress
    from chatstate.bench.runner import run_suite

    options = BenchOptions.create(
        quick=args.quick,
        turns=args.turns,
        repeats=args.repeats,
        sessions=args.sessions,
        history=args.history,
        message_bytes=args.message_bytes,
        max_connections=args.max_connections,
    )
    if args.redis_cluster:
        return _run_cluster(args, options)
    console = Console(highlight=False)
    if not console.is_terminal:  # a log or a pipe: no 80-column wrapping of the table
        console = Console(highlight=False, width=160)
    errors = Console(stderr=True)
    try:
        with contextlib.ExitStack() as stack:
            url = _start_server(stack) if args.redis_server else args.redis
            database = _postgres_database(stack) if args.postgres_server else args.postgres
            progress: Progress = NoProgress()
            if not args.no_progress and errors.is_terminal:
                progress = stack.enter_context(rich_progress(errors))
            report = asyncio.run(
                run_suite(options, redis_url=url, postgres_url=database, progress=progress)
            )
    except BenchError as exc:
        print(f"chatstate bench: error: {exc}", file=sys.stderr)
        return 1
    if args.plot:
        from chatstate.bench.plot import write_plot

        report.notes.append(f"plot: {write_plot(report, args.plot)}, in {args.plot}")
    render(report, console)
    if args.json:
        report.write_json(args.json)
        console.print(f"every figure: {args.json}")
    return 0


def _start_server(stack: contextlib.ExitStack) -> str:
    """A throw-away redis-server, stopped when ``stack`` closes; its URL."""
    from chatstate.testing.redis_server import RedisServer

    try:
        return stack.enter_context(RedisServer()).url
    except RuntimeError as exc:  # no redis-server binary, or it would not start
        raise BenchError(f"could not start a redis-server: {exc}") from exc


def _run_cluster(args: argparse.Namespace, options: BenchOptions) -> int:
    """``--redis-cluster``: see :mod:`chatstate.bench.cluster`."""
    import json

    from chatstate.bench.cluster import render, run_cluster_bench, servers, to_json

    try:
        with servers() as (node_url, cluster_url):
            figures = asyncio.run(run_cluster_bench(node_url, cluster_url, options))
    except BenchError as exc:
        print(f"chatstate bench: error: {exc}", file=sys.stderr)
        return 1
    print(render(figures, options))
    if args.json:
        args.json.write_text(json.dumps(to_json(figures, options), indent=2) + "\n")
        print(f"every figure: {args.json}")
    return 0


def _postgres_database(stack: contextlib.ExitStack) -> str:
    """A throw-away PostgreSQL server (initdb on a free port, fsync off like the throw-away
    redis-server's lack of persistence), stopped when ``stack`` closes; its URL."""
    from chatstate.testing.postgres_server import PostgresServer

    try:
        return stack.enter_context(PostgresServer("max_connections=200")).dsn
    except (RuntimeError, OSError) as exc:  # no initdb, or it would not start
        raise BenchError(f"could not start a PostgreSQL server: {exc}") from exc
