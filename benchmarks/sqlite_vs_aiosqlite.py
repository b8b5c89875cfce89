"""Why the SQLite store runs each call as one job on a thread of its own instead of on aiosqlite.

Side by side, in one process, alternating rounds: SQLiteStateStore's load(limit=20) and bounded
append of a turn, against the same transactions written on aiosqlite (one thread hop per
statement, and a lock held across each transaction, as one connection shared by tasks needs).
Needs aiosqlite, which chatstate does not depend on:

    pip install aiosqlite && python benchmarks/sqlite_vs_aiosqlite.py
"""

import asyncio
import os
import statistics
import tempfile
import time

import aiosqlite

from chatstate import Message
from chatstate.stores._codec import encode_entry
from chatstate.stores.sqlite import SQLiteStateStore

ROUNDS, CALLS = 5, 400
ROW = "SELECT head, tail, expires_at, version FROM chatstate_sessions WHERE id = ?"
ENTRIES = "SELECT entry FROM chatstate_messages WHERE session_id = ? AND seq >= ? ORDER BY seq"


async def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "bench.db")
    store = SQLiteStateStore(path)
    turn = [
        Message(role="user", content="hello there " * 5),
        Message(role="assistant", content="hi " * 20),
    ]
    for _ in range(20):
        await store.append("s", turn, max_messages=20)
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    lock = asyncio.Lock()
    entries = [encode_entry(message) for message in turn]

    async def aiosqlite_load() -> None:
        async with lock:
            await db.execute("BEGIN")
            row = await (await db.execute(ROW, ("s",))).fetchone()
            assert row is not None
            await (await db.execute(ENTRIES, ("s", max(row[0], row[1] - 20)))).fetchall()
            await db.execute("COMMIT")

    async def aiosqlite_append() -> None:
        async with lock:
            await db.execute("BEGIN IMMEDIATE")
            row = await (await db.execute(ROW, ("s",))).fetchone()
            assert row is not None
            head, tail, _, version = row
            await db.executemany(
                "INSERT INTO chatstate_messages VALUES (?, ?, ?)",
                [("s", tail + index, entry) for index, entry in enumerate(entries)],
            )
            tail += len(entries)
            head = max(head, tail - 20)
            await db.execute(
                "DELETE FROM chatstate_messages WHERE session_id = ? AND seq < ?", ("s", head)
            )
            await db.execute(
                "UPDATE chatstate_sessions SET head = ?, tail = ?, version = ? WHERE id = ?",
                (head, tail, version + 1, "s"),
            )
            await db.execute("COMMIT")

    async def store_load() -> None:
        await store.load("s", limit=20)

    async def store_append() -> None:
        await store.append("s", turn, max_messages=20)

    contenders = {
        "SQLiteStateStore load": store_load,
        "aiosqlite load": aiosqlite_load,
        "SQLiteStateStore append": store_append,
        "aiosqlite append": aiosqlite_append,
    }
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, call in contenders.items():
            started = time.perf_counter()
            for _ in range(CALLS):
                await call()
            results[name].append((time.perf_counter() - started) / CALLS * 1e6)
    for name, values in results.items():
        print(f"{name:24s} {statistics.median(values):7.1f} µs (median of {ROUNDS} rounds)")
    await db.close()
    await store.aclose()


asyncio.run(main())
