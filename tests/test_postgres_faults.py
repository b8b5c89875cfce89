"""Faults on a real PostgreSQL server: a writer killed mid-transaction, the server restarted under a
workload, statement_timeout, and a stalled server (pg_sleep in a locking transaction). Every
failure is one of chatstate's typed errors; the documented retry (with the error's write_id)
stores each turn exactly once; nothing is ever half written."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from chatstate import Message
from chatstate.errors import (
    ChatStateError,
    OutcomeUnknownError,
    StateLoadError,
    StateSaveError,
)
from chatstate.stores.postgres import PostgresStateStore
from chatstate.testing.postgres_server import PostgresServer

from .postgres_wire import hold_the_session_row, store

pytestmark = pytest.mark.postgres

_WRITER = """
import asyncio, sys
from chatstate import Message
from chatstate.stores.postgres import PostgresStateStore

async def main(dsn, schema, check):
    settings = {"application_name": "chatstate-writer"}
    if check == "1":  # the server notices a vanished client while the statement waits
        settings["client_connection_check_interval"] = "50ms"
    async with PostgresStateStore.from_url(dsn, schema=schema, server_settings=settings) as store:
        await store.load("s")
        print("ready", flush=True)
        await store.append("s", [Message(role="user", content=f"m{i}") for i in range(500)])
        print("done", flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def _until(predicate: Callable[[], Awaitable[Any]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def _messages(*texts: str) -> list[Message]:
    return [Message(role="user", content=text) for text in texts]


@pytest.mark.parametrize("server_notices", [True, False], ids=["aborted", "completed"])
async def test_a_writer_killed_mid_transaction_leaves_nothing_half_written(
    postgres_dsn: str, pg_schema: str, admin: asyncpg.Connection, server_notices: bool
) -> None:
    async with store(postgres_dsn, pg_schema) as ours:
        await ours.append("s", _messages("before"))
        _, version = await ours.load_versioned("s")
        # A row the writer's 251st entry will collide with, uncommitted: its append inserts 250
        # rows, then waits inside its transaction.
        blocker = await asyncpg.connect(postgres_dsn)
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"INSERT INTO {pg_schema}.messages VALUES ('s', 251, 'x')")
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, postgres_dsn, pg_schema, str(int(server_notices))],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'chatstate-writer' "
                "AND wait_event_type = 'Lock'"
            )
            await _until(lambda: admin.fetchval(waiting), "the writer never waited on the row")
            pid = await admin.fetchval(waiting)
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=10)
        finally:
            if writer.poll() is None:
                writer.kill()
            writer.wait(timeout=10)
            assert writer.stdout is not None
            writer.stdout.close()
        gone = f"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = {pid})"
        if server_notices:
            # The server ends the dead client's backend while it waits: its transaction rolls back.
            await _until(lambda: admin.fetchval(gone), "the server kept the dead client's backend")
            await transaction.rollback()
        else:
            # Unblocked, the statement runs to its end and commits as a whole, client or none.
            await transaction.rollback()
            await _until(lambda: admin.fetchval(gone), "the backend did not end")
        await blocker.close()

        history = await ours.load("s")
        rows = await admin.fetchval(
            f"SELECT count(*) FROM {pg_schema}.messages WHERE session_id = 's'"
        )
        length = await admin.fetchval(
            f"SELECT tail - head FROM {pg_schema}.sessions WHERE id = 's'"
        )
        if server_notices:
            assert [m.content for m in history] == ["before"]
            assert await ours.version("s") == version
        else:
            assert [m.content for m in history] == ["before", *(f"m{i}" for i in range(500))]
            assert await ours.version("s") == version + 1
        assert rows == length == len(history)


async def test_a_server_restart_mid_workload_gives_typed_errors_then_recovers() -> None:
    with PostgresServer() as server:
        async with PostgresStateStore.from_url(
            server.dsn, schema="app", command_timeout=2, timeout=1, max_size=4
        ) as ours:
            sessions, turns = [f"s{i}" for i in range(6)], 15
            acknowledged = 0
            errors: list[BaseException] = []

            async def retried(call: Callable[[], Awaitable[object]]) -> object:
                # The documented retry: the same call with the same write_id, until it lands.
                deadline = time.monotonic() + 60
                while True:
                    try:
                        return await call()
                    except ChatStateError as exc:
                        errors.append(exc)
                        assert time.monotonic() < deadline, f"no recovery: {exc!r}"
                        await asyncio.sleep(0.05)

            async def conversation(session: str) -> None:
                nonlocal acknowledged
                for turn in range(turns):
                    await retried(functools.partial(ours.load, session, limit=4))
                    append = functools.partial(
                        ours.append,
                        session,
                        _messages(f"{session}/{turn}"),
                        write_id=f"{session}-{turn}",
                    )
                    await retried(append)
                    acknowledged += 1
                    await asyncio.sleep(0.01)

            async def fault() -> None:
                await _until(lambda: _at_least(lambda: acknowledged, 20), "no turn landed")
                server.kill()  # SIGKILL: a crash; the next start recovers from the WAL
                await asyncio.sleep(0.3)
                server.start()

            await asyncio.gather(fault(), *(conversation(s) for s in sessions))
            assert acknowledged == len(sessions) * turns
            assert errors, "the restart went unnoticed: the test proves nothing"
            assert {type(e) for e in errors} <= {
                StateSaveError,
                OutcomeUnknownError,
                StateLoadError,
            }
            for session in sessions:
                history = await ours.load(session)
                assert [m.content for m in history] == [f"{session}/{t}" for t in range(turns)]


async def _at_least(value: Callable[[], int], count: int) -> bool:
    return value() >= count


async def test_statement_timeout_gives_a_typed_error_and_writes_nothing(
    postgres_dsn: str, pg_schema: str
) -> None:
    async with store(postgres_dsn, pg_schema, server_settings={"statement_timeout": "200"}) as ours:
        await ours.append("s", _messages("before"))
        held = asyncio.Event()
        holder = asyncio.ensure_future(hold_the_session_row(postgres_dsn, pg_schema, 1.0, held))
        await held.wait()
        with pytest.raises(StateSaveError, match="statement timeout") as raised:
            await ours.append("s", _messages("turn"))
        # Cancelled by the server: rolled back, certainly not applied.
        assert type(raised.value) is StateSaveError
        assert [m.content for m in await ours.load("s")] == ["before"]  # reads never wait
        await holder
        await ours.append("s", raised.value.messages, write_id=raised.value.write_id)
        assert [m.content for m in await ours.load("s")] == ["before", "turn"]


async def test_a_stalled_server_gives_outcome_unknown_and_the_retry_stores_once(
    postgres_dsn: str, pg_schema: str
) -> None:
    # The client gives a call 1 s; the session's row is held for 3 s (slow machines: a margin).
    async with store(postgres_dsn, pg_schema, command_timeout=1.0) as ours:
        await ours.append("s", _messages("before"))
        held = asyncio.Event()
        holder = asyncio.ensure_future(hold_the_session_row(postgres_dsn, pg_schema, 3.0, held))
        await held.wait()
        with pytest.raises(OutcomeUnknownError) as raised:
            await ours.append("s", _messages("turn"), write_id="turn-1")
        assert raised.value.write_id == "turn-1"
        await holder
        for _ in range(2):  # the documented retry, twice: stored once
            await ours.append("s", raised.value.messages, write_id=raised.value.write_id)
        assert [m.content for m in await ours.load("s")] == ["before", "turn"]
