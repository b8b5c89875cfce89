"""How the SQLite store hands a call to its thread, measured in the store itself.

Three ways to run each call as one job (a whole transaction) off the event loop, swapped in under
the same SQLiteStateStore, in one process, alternating rounds: the store's own thread (jobs
queued, callers woken together through ``anyio.from_thread.run_sync``), ``anyio.to_thread.run_sync``
with a ``CapacityLimiter(1)`` over one connection shared by anyio's worker threads, and the
thread pool executor of chatstate 0.1.0 (``loop.run_in_executor``, asyncio only). Measures
``load(limit=20)`` of 20 and an append of 2 (max 20, TTL) at 1 and 100 concurrent sessions:

    python benchmarks/sqlite_thread_handoff.py
"""

import asyncio
import functools
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread

from chatstate import Message
from chatstate.stores.sqlite import SQLiteStateStore

ROUNDS = int(os.environ.get("ROUNDS", "7"))
CALLS = 1000
TURN = [Message(role="user", content="u" * 200), Message(role="assistant", content="a" * 200)]


def _open(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class ToThread:
    def __init__(self, path: str) -> None:
        self._connection = _open(path)
        self._limiter = anyio.CapacityLimiter(1)

    async def run(self, job: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(
            functools.partial(job, self._connection, *args), limiter=self._limiter
        )

    async def aclose(self) -> None:
        self._connection.close()


class Executor:
    def __init__(self, path: str) -> None:
        self._connection = _open(path)
        self._executor = ThreadPoolExecutor(1)

    async def run(self, job: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(job, self._connection, *args)
        )

    async def aclose(self) -> None:
        self._executor.shutdown()
        self._connection.close()


async def _per_call(store: SQLiteStateStore, operation: str, sessions: int) -> float:
    per_session = CALLS // sessions

    async def work(session_id: str) -> None:
        for _ in range(per_session):
            if operation == "load":
                await store.load(session_id, limit=20)
            else:
                await store.append(session_id, TURN, max_messages=20, ttl=3600)

    started = time.perf_counter()
    await asyncio.gather(*(work(f"s{index}") for index in range(sessions)))
    return (time.perf_counter() - started) / (per_session * sessions) * 1e6


async def main() -> None:
    folder = tempfile.mkdtemp()
    stores: dict[str, SQLiteStateStore] = {}
    for name, runner in (("store's thread", None), ("to_thread", ToThread), ("executor", Executor)):
        path = os.path.join(folder, f"{name}.db")
        store = SQLiteStateStore(path)
        await store.append("s0", TURN)  # the file and its tables
        if runner is not None:
            await store.backend._thread.aclose()
            store.backend._thread = runner(path)  # type: ignore[assignment]
        for index in range(100):
            for _ in range(10):
                await store.append(f"s{index}", TURN, max_messages=20, ttl=3600)
        stores[name] = store
    for sessions in (1, 100):
        for operation in ("load", "append"):
            figures: dict[str, list[float]] = {name: [] for name in stores}
            for _ in range(ROUNDS):
                for name, store in stores.items():
                    figures[name].append(await _per_call(store, operation, sessions))
            for name, values in figures.items():
                print(
                    f"{operation:6} {sessions:3} sessions  {name:15} "
                    f"{statistics.median(values):6.1f} µs a call (median of {ROUNDS} rounds)"
                )
    for store in stores.values():
        await store.aclose()


asyncio.run(main())
