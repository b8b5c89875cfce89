"""Why the PostgreSQL store runs on asyncpg rather than psycopg 3 (async).

Side by side, in one process, alternating rounds, on one table keyed by (session, seq): a load of
the newest 20 rows and an append of two rows (one INSERT of two rows), each one statement on one
connection, the same SQL on both drivers (prepared statements: asyncpg prepares and caches
them, psycopg prepares a query after its fifth run, here from the first with prepare=True).
Needs psycopg, which chatstate does not depend on, and a server:

    pip install "psycopg[binary]" asyncpg
    python benchmarks/postgres_drivers.py postgresql://postgres@127.0.0.1:5432/postgres
"""

import asyncio
import statistics
import sys
import time

import asyncpg
import psycopg

ROUNDS, CALLS = 5, 1000
ENTRY = b'{"role":"user","content":"' + b"x" * 200 + b'"}'
SCHEMA = """
DROP TABLE IF EXISTS driver_bench;
CREATE TABLE driver_bench (session_id text, seq bigint, entry bytea, PRIMARY KEY (session_id, seq))
"""
LOAD = "SELECT entry FROM driver_bench WHERE session_id = $1 ORDER BY seq DESC LIMIT 20"
APPEND = "INSERT INTO driver_bench VALUES ($1, $2, $3), ($1, $2 + 1, $3)"


async def main(url: str) -> None:
    apg = await asyncpg.connect(url)
    pg = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await apg.execute(SCHEMA)
    seq = {"asyncpg": 0, "psycopg": 0}

    async def asyncpg_load() -> None:
        await apg.fetch(LOAD, "a")

    async def asyncpg_append() -> None:
        seq["asyncpg"] += 2
        await apg.execute(APPEND, "a", seq["asyncpg"], ENTRY)

    async def psycopg_load() -> None:
        cursor = await pg.execute(LOAD.replace("$1", "%s"), ("p",), prepare=True)
        await cursor.fetchall()

    async def psycopg_append() -> None:
        seq["psycopg"] += 2
        query = APPEND.replace("$1", "%(s)s").replace("$2", "%(n)s").replace("$3", "%(e)s")
        await pg.execute(query, {"s": "p", "n": seq["psycopg"], "e": ENTRY}, prepare=True)

    sides = {
        "asyncpg load": asyncpg_load,
        "psycopg load": psycopg_load,
        "asyncpg append": asyncpg_append,
        "psycopg append": psycopg_append,
    }
    for call in sides.values():  # warm up, and 20 rows to load
        for _ in range(20):
            await call()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(ROUNDS):
        for name, call in sides.items():
            started = time.perf_counter()
            for _ in range(CALLS):
                await call()
            times[name].append((time.perf_counter() - started) / CALLS * 1e6)
    for name, measured in times.items():
        print(f"{name:16} median {statistics.median(measured):6.1f} µs  min {min(measured):6.1f} µs")
    await apg.execute("DROP TABLE driver_bench")
    await apg.close()
    await pg.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/postgres"))
