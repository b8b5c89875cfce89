"""The PostgreSQL backend's hot path on several checkouts, side by side: appends and plain loads
per second, one caller on one connection (so a call's cost, not a batch's, is what is timed), and
the CPU each call costs the server (the connection's backend process, by ``/proc/<pid>/schedstat``;
the server must run on this machine) and the client (``time.process_time``): measures that a
machine busy with other work moves less than it moves wall time.

Each version runs in a fresh process of its own (``NAME=PYTHON[:PYTHONPATH]``), once a round,
in a new order each round, in a database of the run's own on the server of ``--dsn`` (dropped at the
end), each round in a schema of its own: ``--sessions`` sessions seeded with 20 entries of 200 B,
then ``--calls`` appends of two entries of 200 B (``max_entries=20``, a TTL), round robin over the
sessions, then as many plain loads of the newest 20. ``--meta`` also times, for the versions whose
backend has them, appends that carry a metadata entry of 100 B and reads with ``meta=True``::

    python benchmarks/postgres_meta_cost.py before=/work/main/.venv/bin/python:/tmp/before/src \\
        after=/work/main/.venv/bin/python:src --rounds 5 --meta

It prints, per version and operation, the median of the rounds and their range: calls per second,
and the server's and the client's CPU per call in microseconds. Name a version twice (``before``
and ``before2``, the same checkout) to see how far two runs of one version differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

SIZE, HISTORY = 200, 20


async def _worker(dsn: str, calls: int, sessions: int, meta: bool) -> dict[str, float]:
    import asyncpg

    from chatstate.stores.postgres import PostgresBackend, no_reset

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, reset=no_reset)
    backend: Any = PostgresBackend(
        pool, schema=schema, clock=None, sweep_interval=None, batch_appends=False
    )
    entry = b"x" * SIZE
    ids = [f"session-{n}" for n in range(sessions)]

    async def append(session: str, **extra: Any) -> None:
        await backend.append(
            session,
            [entry, entry],
            max_entries=HISTORY,
            ttl=3600.0,
            write_id=secrets.token_hex(8),
            fence=None,
            **extra,
        )

    pid = await pool.fetchval("SELECT pg_backend_pid()")  # the pool's one connection

    def server_cpu() -> float:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9

    async def timed(name: str, call: Any) -> None:
        server, client, start = server_cpu(), time.process_time(), time.perf_counter()
        for n in range(calls):
            await call(ids[n % sessions])
        figures[f"{name}/s"] = calls / (time.perf_counter() - start)
        figures[f"{name} server µs"] = (server_cpu() - server) / calls * 1e6
        figures[f"{name} client µs"] = (time.process_time() - client) / calls * 1e6

    figures: dict[str, float] = {}

    try:
        for session in ids:
            for _ in range(HISTORY // 2):
                await append(session)
        plain = {"limit": HISTORY, "summary": False, "touch": None, "numbers": False}
        await timed("append", append)
        await timed("load", lambda session: backend.read(session, **plain))
        if meta and hasattr(backend, "write_meta"):
            described = b"m" * 100
            await timed("append+meta", lambda session: append(session, meta=described))
            await timed("read+meta", lambda session: backend.read(session, **plain, meta=True))
        return figures
    finally:
        await backend.drop_schema()
        await pool.close()


def _run(python: str, path: str | None, dsn: str, options: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path
    argv = [python, __file__, "--worker", dsn, "--calls", str(options.calls)]
    argv += ["--sessions", str(options.sessions)] + (["--meta"] if options.meta else [])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", help="NAME=PYTHON[:PYTHONPATH]")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--meta", action="store_true")
    parser.add_argument("--worker", metavar="DSN", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        work = _worker(options.worker, options.calls, options.sessions, options.meta)
        print(json.dumps(asyncio.run(work)))
        return
    import asyncpg

    database = f"chatstate_bench_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(options.dsn)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE DATABASE {database}"))
    dsn = options.dsn.rsplit("/", 1)[0] + f"/{database}"
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for _ in range(options.rounds):
            # In a new order each round: no version always runs after another's database work.
            for version in random.sample(options.versions, len(options.versions)):
                name, _, where = version.partition("=")
                python, _, path = where.partition(":")
                for key, value in _run(python, path or None, dsn, options).items():
                    results.setdefault(name, {}).setdefault(key, []).append(value)
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
    for name, figures in results.items():
        print(f"{name} (median of {options.rounds} rounds, and their range):")
        for key, values in figures.items():
            median, low, high = statistics.median(values), min(values), max(values)
            print(f"  {key:24} {median:10,.1f}   ({low:,.1f} to {high:,.1f})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
