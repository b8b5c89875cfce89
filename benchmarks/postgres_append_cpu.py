"""The server's CPU per append and per plain load, layout against layout, in one process on one
connection: the store's layout now beside the SQL of an earlier one (by default layout 2, the
fixture of the migration tests), each in a schema of its own, in blocks of calls in a new order
each round, so that whatever else the machine does falls on every layout alike.

The server's CPU is the connection's backend process's, by ``/proc/<pid>/schedstat`` (the server
must run on this machine); the client's work is the same for every layout (the same statement
but for the function's schema and its one more argument). Each append is of two entries of
200 B, ``max_entries=20``, a TTL, round robin over 100 sessions seeded with 20 entries::

    python benchmarks/postgres_append_cpu.py --rounds 30

The earlier layout runs twice (``old`` and ``old2``, two schemas): how far they differ is how far
two runs of the same function differ here. ``now+meta`` is the append that also writes a metadata
entry of 4 B.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import random
import secrets
import statistics
import time
import uuid

import asyncpg

from chatstate.stores.postgres._schema import layout

_FIXTURE = pathlib.Path(__file__).parent.parent / "tests" / "fixtures" / "postgres-layout-2.sql"
_ENTRIES = [b"x" * 200, b"y" * 200]
_APPEND = "SELECT * FROM {s}.append($1, $2, 20, 3600, $3, NULL, NULL, 0{more})"
_LOAD = (
    "SELECT ARRAY(SELECT entry FROM {s}.messages WHERE session_id = s.id "
    "AND seq >= greatest(s.head, s.tail - 20) ORDER BY seq) FROM {s}.sessions s "
    "WHERE s.id = $1 AND s.live AND (s.expires_at IS NULL OR s.expires_at > {s}._now(NULL))"
)


async def _measure(dsn: str, old_sql: str, rounds: int, block: int) -> None:
    connection = await asyncpg.connect(dsn)
    pid = await connection.fetchval("SELECT pg_backend_pid()")

    def server_cpu() -> float:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e3  # ns -> µs

    old = f"bench_old_{uuid.uuid4().hex[:8]}"
    old2 = f"bench_old2_{uuid.uuid4().hex[:8]}"
    now = f"bench_now_{uuid.uuid4().hex[:8]}"
    for schema, sql in ((old, old_sql), (old2, old_sql), (now, layout("@schema@"))):
        await connection.execute(f"CREATE SCHEMA {schema}")
        await connection.execute(sql.replace("@schema@", schema))
    # Each side: its append and its plain load (None: the load is another side's).
    calls = {
        "old": (_APPEND.format(s=old, more=""), _LOAD.format(s=old)),
        "old2": (_APPEND.format(s=old2, more=""), _LOAD.format(s=old2)),
        "now": (_APPEND.format(s=now, more=", NULL"), _LOAD.format(s=now)),
        "now+meta": (_APPEND.format(s=now, more=", '\\x6d6d6d6d'::bytea"), None),
    }
    for append, _ in calls.values():
        for n in range(100):
            for _ in range(10):
                await connection.fetchrow(append, f"s{n}", _ENTRIES, secrets.token_hex(8))
    figures: dict[str, list[tuple[float, float]]] = {}

    async def timed(key: str, query: str, *args: object) -> None:
        cpu, wall = server_cpu(), time.perf_counter()
        for n in range(block):
            await connection.fetch(query, f"s{n % 100}", *args)
        spent = ((server_cpu() - cpu) / block, (time.perf_counter() - wall) / block * 1e6)
        figures.setdefault(key, []).append(spent)

    try:
        for _ in range(rounds):
            for name in random.sample(list(calls), len(calls)):
                append, load = calls[name]
                await timed(f"{name} append", append, _ENTRIES, secrets.token_hex(8))
                if load is not None:
                    await timed(f"{name} load", load)
    finally:
        for schema in (old, old2, now):
            await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        await connection.close()
    print(f"server CPU and wall µs per call ({rounds} blocks of {block} each): median (min)")
    for key in sorted(figures):
        cpu = [spent[0] for spent in figures[key]]
        wall = [spent[1] for spent in figures[key]]
        print(
            f"  {key:16} CPU {statistics.median(cpu):6.1f} ({min(cpu):6.1f})"
            f"   wall {statistics.median(wall):6.1f} ({min(wall):6.1f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--old", type=pathlib.Path, default=_FIXTURE, help="an earlier layout")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=400)
    options = parser.parse_args()
    database = f"chatstate_bench_{uuid.uuid4().hex[:12]}"

    async def run() -> None:
        admin = await asyncpg.connect(options.dsn)
        await admin.execute(f"CREATE DATABASE {database}")
        try:
            dsn = options.dsn.rsplit("/", 1)[0] + f"/{database}"
            old_sql = options.old.read_text(encoding="utf-8")
            await _measure(dsn, old_sql, options.rounds, options.block)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            await admin.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
