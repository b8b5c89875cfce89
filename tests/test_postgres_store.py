"""The PostgreSQL store against a real server: round trips, two instances, schemas, migration,
pools, the sweep, URLs and the command line. (The conformance, stateful and fuzz suites run over
it too; faults are in test_postgres_faults.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from chatstate import Message, open_store
from chatstate.cli import main
from chatstate.errors import (
    ConfigurationError,
    LeaseLostError,
    StateLoadError,
    StateSaveError,
    UnsupportedFormatError,
)
from chatstate.stores import Fenced, Written
from chatstate.stores.postgres import SCHEMA_VERSION, PostgresStateStore
from chatstate.testing.postgres_server import execute

from .conftest import FakeClock
from .postgres_wire import counting, store

pytestmark = pytest.mark.postgres


def _turn(text: str) -> list[Message]:
    return [Message(role="user", content=text), Message(role="assistant", content=f"re: {text}")]


def _texts(messages: list[Message]) -> list[str | None]:
    return [message.content for message in messages]


async def test_one_round_trip_per_call(postgres_dsn: str, pg_schema: str) -> None:
    connection = counting()
    async with store(postgres_dsn, pg_schema, connection_class=connection, max_size=1) as ours:
        # Every statement once, so that each is prepared before counting.
        await ours.append("s", _turn("warm"), max_messages=6, ttl=60)
        await ours.load("s")
        await ours.load_versioned("s", limit=2)
        await ours.save("t", _turn("saved"))
        await ours.delete("t")

        async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
            return 1, Message(role="system", content="summary")

        calls = {
            "append (bounded, with a ttl)": lambda: ours.append(
                "s", _turn("one"), max_messages=6, ttl=60
            ),
            "load": lambda: ours.load("s"),
            "load(limit)": lambda: ours.load("s", limit=2),
            "load_versioned": lambda: ours.load_versioned("s", limit=2),
            "save": lambda: ours.save("t", _turn("saved")),
            "delete": lambda: ours.delete("t"),
        }
        for name, call in calls.items():
            before = connection.writes
            await call()
            assert connection.writes - before == 1, name
        # A fold reads (one) and commits (one).
        await ours.append("s", _turn("three"), max_messages=6, ttl=60)
        await ours.compact("s", fold)
        await ours.append("s", _turn("four"), max_messages=6, ttl=60)
        before = connection.writes
        assert await ours.compact("s", fold)
        assert connection.writes - before == 2
        # What a round trip carries: the counter is no constant.
        before = connection.writes
        await ours.load("s")
        await ours.append("s", _turn("two"), max_messages=6, ttl=60)
        assert connection.writes - before == 2


async def test_two_instances_share_sessions_versions_and_leases(
    postgres_dsn: str, pg_schema: str
) -> None:
    async with store(postgres_dsn, pg_schema) as one, store(postgres_dsn, pg_schema) as two:
        await one.append("s", _turn("from one"))
        assert _texts(await two.load("s")) == ["from one", "re: from one"]
        _, version = await two.load_versioned("s")
        await one.append("s", _turn("again"), max_messages=3)
        assert await two.version("s") == version + 1
        assert _texts(await two.load("s")) == ["re: from one", "again", "re: again"]

        async with one.lease("s", ttl=5, timeout=1):
            assert not await two.backend.acquire_lease("s", "other", 5)
            await one.append("s", _turn("leased"), max_messages=3)
        assert await two.backend.acquire_lease("s", "other", 5)
        await two.backend.release_lease("s", "other")

        assert await two.delete("s") is True
        assert await one.load("s") == []


async def test_a_stale_lease_holder_stores_nothing(postgres_dsn: str, pg_schema: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with store(postgres_dsn, pg_schema, clock=clock) as one:
        await one.append("s", _turn("before"))
        with pytest.raises(LeaseLostError):
            async with one.lease("s", ttl=1, timeout=1):
                clock.advance(5)  # the lease ran out: another instance takes it and writes
                assert await one.backend.acquire_lease("s", "thief", 30)
                await one.append("s", _turn("too late"))
        assert _texts(await one.load("s")) == ["before", "re: before"]


async def test_two_schemas_keep_two_apps_apart(postgres_dsn: str, pg_schema: str) -> None:
    async with (
        store(postgres_dsn, f"{pg_schema}_a") as app_a,
        store(postgres_dsn, f"{pg_schema}_b") as app_b,
    ):
        await app_a.append("s", _turn("a"))
        await app_b.append("s", _turn("b"))
        assert _texts(await app_a.load("s")) == ["a", "re: a"]
        assert _texts(await app_b.load("s")) == ["b", "re: b"]
        assert [s async for s in app_a.session_ids()] == ["s"]
        await app_a.delete("s")
        assert _texts(await app_b.load("s")) == ["b", "re: b"]


async def test_a_schema_written_by_a_newer_chatstate_is_refused(
    postgres_dsn: str, pg_schema: str
) -> None:
    async with store(postgres_dsn, pg_schema) as ours:
        await ours.append("s", _turn("kept"))
    version = f"SELECT value FROM {pg_schema}.meta WHERE name = 'schema'"
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert await connection.fetchval(version) == SCHEMA_VERSION
        await connection.execute(f"UPDATE {pg_schema}.meta SET value = {SCHEMA_VERSION + 1}")
    finally:
        await connection.close()
    async with store(postgres_dsn, pg_schema) as newer:
        with pytest.raises(UnsupportedFormatError, match="newer chatstate"):
            await newer.load("s")
        with pytest.raises(UnsupportedFormatError):
            await newer.append("s", _turn("lost"))


async def test_two_stores_create_one_schema_at_once(postgres_dsn: str, pg_schema: str) -> None:
    stores = [store(postgres_dsn, pg_schema) for _ in range(4)]
    try:
        await asyncio.gather(*(s.append(f"s{i}", _turn(str(i))) for i, s in enumerate(stores)))
        assert sorted([s async for s in stores[0].session_ids()]) == ["s0", "s1", "s2", "s3"]
    finally:
        for each in stores:
            await each.aclose()


async def test_a_pool_of_the_callers_own_is_used_and_left_open(
    postgres_dsn: str, pg_schema: str
) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        async with PostgresStateStore(pool, schema=pg_schema) as ours:
            await ours.append("s", _turn("mine"))
            assert ours.backend.pool is pool
        assert not pool.is_closing()
        assert await pool.fetchval(f"SELECT count(*) FROM {pg_schema}.messages") == 2
    finally:
        await pool.close()


async def test_the_sweep_deletes_expired_sessions_in_chunks(
    postgres_dsn: str, pg_schema: str
) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with store(postgres_dsn, pg_schema, clock=clock, sweep_interval=None) as ours:
        await asyncio.gather(*(ours.append(f"s{i}", _turn("x"), ttl=10) for i in range(600)))
        await ours.append("kept", _turn("x"))
        await ours.delete("gone")  # a tombstone, for its write ids: swept 600 s on
        clock.advance(11)
        assert (await ours.metrics()).active_sessions == 1
        assert await ours.sweep() == 600
        assert ours.expirations == 600
        counted = f"SELECT count(*) FROM {pg_schema}.sessions"
        pool = ours.backend.pool
        assert pool is not None
        assert await pool.fetchval(counted) == 2
        clock.advance(600)
        assert await ours.sweep() == 0
        assert await pool.fetchval(counted) == 1
        assert await pool.fetchval(f"SELECT count(*) FROM {pg_schema}.messages") == 2


async def test_a_write_sweeps_once_per_interval(postgres_dsn: str, pg_schema: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with store(postgres_dsn, pg_schema, clock=clock, sweep_interval=60) as ours:
        await ours.append("old", _turn("x"), ttl=1)  # the first write sweeps (nothing yet)
        clock.advance(2)
        await ours.append("new", _turn("y"))  # the next sweep is not due
        pool = ours.backend.pool
        assert pool is not None
        assert await pool.fetchval(f"SELECT count(*) FROM {pg_schema}.sessions") == 2
        assert await ours.load("old") == []
        clock.advance(60)
        await ours.append("new", _turn("z"))  # due: swept in this write's transaction
        assert await pool.fetchval(f"SELECT count(*) FROM {pg_schema}.sessions") == 1


async def test_no_server_means_nothing_written(pg_schema: str) -> None:
    # A port where nothing listens: every call fails at once, typed, never "outcome unknown".
    from chatstate.testing.redis_server import find_free_port

    url = f"postgresql://postgres@127.0.0.1:{find_free_port()}/postgres"
    async with PostgresStateStore.from_url(url, schema=pg_schema) as ours:
        with pytest.raises(StateSaveError) as raised:
            await ours.append("s", _turn("x"))
        assert type(raised.value) is StateSaveError
        assert raised.value.write_id is not None
        with pytest.raises(StateLoadError):
            await ours.load("s")


def test_open_store_and_the_command_line_take_postgres_urls(
    postgres_dsn: str, pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opened = open_store(postgres_dsn, schema=pg_schema)
    assert isinstance(opened, PostgresStateStore) and opened.schema == pg_schema
    asyncio.run(opened.aclose())
    for bad in ("postgresql://", "mysql://x"):
        with pytest.raises(ConfigurationError):
            PostgresStateStore.from_url(bad) if bad == "mysql://x" else open_store(
                bad, schema="Not Valid"
            )

    async def fill() -> None:
        async with store(postgres_dsn, pg_schema) as ours:
            await ours.append("s1", [Message(role="user", content="Hello")])

    asyncio.run(fill())
    other = f"{pg_schema}_copy"
    export = tmp_path / "export.jsonl"
    assert main(["export", "--store", postgres_dsn, "--schema", pg_schema, "-o", str(export)]) == 0
    assert "exported 1 sessions" in capsys.readouterr().err
    assert main(["import", "--store", postgres_dsn, "--schema", other, str(export)]) == 0
    assert main(["fork", "--store", postgres_dsn, "--schema", other, "s1", "s2"]) == 0
    assert main(["inspect", "--store", postgres_dsn, "--schema", other, "s2"]) == 0
    assert "Hello" in capsys.readouterr().out
    assert main(["sessions", "--store", postgres_dsn, "--schema", other]) == 0
    assert capsys.readouterr().out.split() == ["s1", "s2"]
    assert main(["sessions", "--store", postgres_dsn, "--schema", pg_schema]) == 0
    assert capsys.readouterr().out.split() == ["s1"]
    execute(postgres_dsn, f"DROP SCHEMA {other} CASCADE", f"DROP SCHEMA {pg_schema} CASCADE")


async def test_concurrent_appends_share_one_statement_and_keep_their_order(
    postgres_dsn: str, pg_schema: str
) -> None:
    connection = counting()
    async with store(postgres_dsn, pg_schema, connection_class=connection) as ours:
        sessions = [f"s{index}" for index in range(50)]
        for session in sessions:
            await ours.append(session, _turn("seed"), max_messages=4)
        assert ours.backend.batcher is not None and ours.backend.batcher.batches == 0
        before = connection.writes
        await asyncio.gather(
            *(ours.append(session, _turn("next"), max_messages=4) for session in sessions),
            *(ours.append("s7", _turn(f"more {index}"), max_messages=4) for index in range(3)),
        )
        # The first went alone; the other 52 in batches, far fewer round trips than appends.
        assert ours.backend.batcher.batches >= 1
        assert connection.writes - before < 10
        for session in sessions:
            expected = ["seed", "re: seed", "next", "re: next"]
            if session == "s7":
                expected = ["more 1", "re: more 1", "more 2", "re: more 2"]
            assert _texts(await ours.load(session)) == expected, session


async def test_a_fenced_append_in_a_batch_is_refused_alone(
    postgres_dsn: str, pg_schema: str
) -> None:
    async with store(postgres_dsn, pg_schema) as ours:
        backend = ours.backend
        assert await backend.acquire_lease("f", "holder", 30)

        async def append(session: str, fence: str | None) -> object:
            try:
                return await backend.append(
                    session, [b"x"], max_entries=None, ttl=None, write_id=f"w-{session}",
                    fence=fence,
                )  # fmt: skip
            except Fenced as exc:
                return exc

        results = await asyncio.gather(
            append("a", None), append("b", None), append("f", "stale"), append("c", "nobody")
        )
        assert backend.batcher is not None and backend.batcher.batches == 1
        assert [type(result) for result in results] == [Written, Written, Fenced, Fenced]
        for session, length in (("a", 1), ("b", 1), ("f", 0), ("c", 0)):
            page = await backend.read(session, limit=None, summary=False, touch=None, numbers=True)
            assert page.length == length, session
        assert isinstance(await append("f", "holder"), Written)  # the holder's own goes through
