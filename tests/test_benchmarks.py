"""`chatstate bench` runs both sides of every comparison and reports them. Its figures are not
tested: timing assertions do not belong in unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from chatstate.bench import encryption, memory, scenarios, turns
from chatstate.bench.cluster import SETUPS
from chatstate.bench.measure import percentile
from chatstate.bench.options import BenchOptions
from chatstate.bench.redis_floors import (
    HandWrittenRedisFloor,
    NaiveDictRedisFloor,
    PydanticRedisFloor,
)
from chatstate.bench.results import Target
from chatstate.bench.runner import run_suite
from chatstate.bench.sqlite import HandWrittenSQLiteFloor
from chatstate.bench.workload import Floor, conversation, english_text
from chatstate.cli import main
from chatstate.messages import Message
from chatstate.stores.base import StateStore
from chatstate.stores.memory import InMemoryStateStore
from chatstate.stores.redis import RedisStateStore
from chatstate.stores.sqlite import SQLiteStateStore
from chatstate.testing import RedisServer
from chatstate.testing.redis_server import find_free_port
from chatstate.tools import Tool

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row, after checking that its ratio is ours / floor and its verdict its target's."""
    rows: list[dict[str, Any]] = report["results"]
    assert rows
    for row in rows:
        assert row["ours"] > 0 and row["floor"] > 0, row
        assert row["ratio"] == row["ours"] / row["floor"], row
        assert (row["ok"] is None) == (row["target"] is None), row
    return rows


def _sqlite_rows(rows: list[dict[str, Any]], beside: set[str]) -> list[dict[str, Any]]:
    """The SQLite rows, after checking their shape: each scenario at 1 and 100 sessions, ours with
    throughput, p50 and p99 (a turn: p50 of both steps), the stores ``beside`` it with two."""
    found = [row for row in rows if row["group"] == "sqlite"]
    assert {(row["key"], row["sessions"]) for row in found} == {
        (key, sessions) for key in ("load", "append", "turn") for sessions in (1, 100)
    }
    assert {row["variant"] for row in found} == {"", *beside}
    for key, metrics in (
        ("load", {"throughput", "load p50", "load p99"}),
        ("append", {"throughput", "append p50", "append p99"}),
        ("turn", {"throughput", "load p50", "append p50"}),
    ):
        for sessions in (1, 100):
            ours = [r for r in found if r["key"] == key and r["sessions"] == sessions]
            assert {r["metric"] for r in ours if not r["variant"]} == metrics
            for variant in beside:
                assert len([r for r in ours if r["variant"] == variant]) == 2
    units = {"load": "loads/s", "append": "appends/s", "turn": "turns/s"}
    for row in found:
        assert row["unit"] == (units[row["key"]] if row["metric"] == "throughput" else "µs")
        assert row["round_trips_per_op"] is None and row["target"] is None
    return found


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # axes, lines and labels, not an empty canvas


def test_a_quick_run_against_redis_measures_both_sides(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    command = [sys.executable, "-W", "error", "-m", "chatstate", "bench", "--quick"]
    done = subprocess.run(
        [*command, "--redis", redis_server.url, "--json", str(out), "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=600,  # a hang's limit: 80 s at a load of 4 on 2 cores, over 120 s at 10
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "In-memory store" in done.stdout and "Redis store" in done.stdout
    assert "targets met:" in done.stdout

    report = json.loads(out.read_text())
    rows = _rows(report)
    assert {row["group"] for row in rows} == {"in-memory", "sqlite", "redis"}
    # SQLite beside its hand-written floor, with the in-memory and Redis stores in the same rounds.
    _sqlite_rows(rows, {"in-memory store", "Redis store"})
    assert any(
        note.startswith("sqlite, 100 sessions:") and "Redis store" in note
        for note in report["notes"]
    )
    redis_rows = [row for row in rows if row["group"] == "redis"]
    assert {row["floor_name"] for row in redis_rows} == {
        "pydantic floor",
        "naive dict floor",
        "plain load",
        "unencrypted",
        "RedisSession (openai-agents)",
        "RedisChatStore (llama-index)",
    }
    # The framework integrations beside the frameworks' own Redis implementations.
    for key in ("agents_turn", "llama_index_turn"):
        beside = [row for row in redis_rows if row["key"] == key]
        assert {(row["variant"], row["metric"]) for row in beside} == {
            (variant, metric)
            for variant in ("", "max_items=history")
            for metric in ("throughput", "load p50")
        }
        assert all(row["ours"] > 0 and row["floor"] > 0 for row in beside)
        trips = beside[0]["round_trips_per_op"]
        assert trips["ours"] <= trips["floor"]
    assert {row["floor_name"] for row in rows if row["group"] != "redis"} == {""}
    turn = [row for row in redis_rows if row["key"] == "turn"]
    assert {row["sessions"] for row in turn} == {1, 100, 1000}
    assert {row["metric"] for row in turn} == {"throughput", "load p50", "load p99"}
    for floor_name in ("pydantic floor", "naive dict floor"):
        headline = [
            row
            for row in turn
            if row["metric"] == "throughput"
            and not row["variant"]
            and row["floor_name"] == floor_name
        ]
        assert [row["sessions"] for row in headline] == [1, 100, 1000]
        assert [row["target"] for row in headline] == [
            ">= 1 x floor",
            ">= 5 x floor",
            ">= 5 x floor",
        ]
    # The naive dict floor ran in the same rounds as ours: its rows put ours beside its figures,
    # not the pydantic floor's.
    naive = [row for row in turn if row["floor_name"] == "naive dict floor"]
    assert {(row["sessions"], row["metric"]) for row in naive} == {
        (sessions, metric)
        for sessions in (1, 100, 1000)
        for metric in ("throughput", "load p50", "load p99")
    }
    for row in naive:
        assert not row["variant"]
        sides = report["scenarios"]["redis"][f"turn@{row['sessions']}"]["sides"]
        picked = {
            "throughput": lambda side: side["turns_per_s"],
            "load p50": lambda side: side["latency_ms"]["load"]["p50"],
            "load p99": lambda side: side["latency_ms"]["load"]["p99"],
        }[row["metric"]]
        assert row["ours"] == picked(sides["ours"])
        assert row["floor"] == picked(sides["naive dict floor"])
        if row["metric"] == "throughput":
            assert row["ok"] is (row["ratio"] >= {1: 1.0, 100: 5.0, 1000: 5.0}[row["sessions"]])
        else:
            assert row["target"] is None
    # Round trips are counted at the connection, for both sides of every concurrent scenario.
    counted = [row for row in rows if row["round_trips_per_op"] is not None]
    assert {row["key"] for row in counted} >= {"turn", "load", "append", "pipeline_turn"}
    for row in counted:
        warm_cache = row["key"] == "cached_load" and row["variant"] != "no cache (Redis)"
        if warm_cache:  # served from memory: the commands it saves
            assert row["round_trips_per_op"]["ours"] < 0.01
        else:
            assert row["round_trips_per_op"]["ours"] > 0
    lazy = {row["variant"]: row for row in rows if row["key"] == "lazy_turn"}
    assert set(lazy) == {"", "lazy=False"}
    assert all(row["round_trips_per_op"]["ours"] > 0 for row in lazy.values())
    cached = {row["variant"] for row in rows if row["key"] == "cached_load"}
    assert cached == {"", "no cache (Redis)", "in-memory store"}
    for row in turn:  # both floors: one LRANGE, one MULTI/EXEC
        assert row["round_trips_per_op"]["floor"] == 1.0
    assert {row["variant"] for row in turn} == {"", "auto_pipeline=False"}
    # The token window beside the same store's plain load: the same round trips on both sides.
    windows = {row["key"]: row for row in rows if row["key"].startswith("window_")}
    assert set(windows) == {"window_20", "window_200", "window_2000"}
    assert [windows[f"window_{n}"]["sessions"] for n in (20, 200, 2000)] == [100, 100, 20]
    for row in windows.values():
        trips = row["round_trips_per_op"]
        assert trips["ours"] == pytest.approx(trips["floor"], rel=0.5) and trips["ours"] > 0
    # Encryption's cost per load: beside the same Redis store unencrypted, with and without the
    # message cache; the same round trips on both sides.
    encrypted = [row for row in rows if row["group"] == "redis" and row["key"] == "encrypted_load"]
    assert {(row["variant"], row["metric"]) for row in encrypted} == {
        (variant, metric)
        for variant in ("", "message_cache_bytes=0")
        for metric in ("throughput", "load p50")
    }
    for row in encrypted:
        assert row["sessions"] == 100
        trips = row["round_trips_per_op"]
        assert trips["ours"] == pytest.approx(trips["floor"], rel=0.5) and trips["ours"] > 0
    stored = [row for row in rows if row["key"] == "stored_bytes"]
    assert {row["variant"] for row in stored} == {"", "compress_over=None", "compression='zstd'"}
    large = [row for row in rows if row["group"] == "redis" and row["key"] == "large_messages"]
    assert {row["variant"] for row in large} == {"", "compress_over=None", "compression='zstd'"}
    assert {row["metric"] for row in large} == {"throughput", "load p50"}

    assert report["environment"]["redis_server"]
    assert report["environment"]["python"] == sys.version.split()[0]
    assert report["options"]["quick"] is True
    assert set(report["scenarios"]["redis"]["turn@100"]["sides"]) >= {"ours", "floor"}
    _assert_png(plot)
    # Every key the run wrote is gone.
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match="chatstate-bench-*")) == []
    finally:
        client.close()


@pytest.mark.slow  # a whole `chatstate bench --quick`: about 20 s
def test_a_quick_run_without_redis_measures_the_in_memory_and_sqlite_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    status = main(["bench", "--quick", "--no-progress", "--json", str(out), "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "In-memory store" in printed and "SQLite store" in printed
    assert "Redis store" not in printed
    assert list(temporary.iterdir()) == []  # the SQLite files are gone
    report = json.loads(out.read_text())
    rows = _rows(report)
    assert {row["group"] for row in rows} == {"in-memory", "sqlite"}
    _sqlite_rows(rows, {"in-memory store"})
    assert report["environment"]["sqlite"]
    notes = [note for note in report["notes"] if note.startswith("sqlite, ")]
    assert [note.split(":")[0] for note in notes] == ["sqlite, 1 session", "sqlite, 100 sessions"]
    assert all("by hand" in note and "in-memory store" in note for note in notes)
    # Encryption's cost per load, beside the plain in-memory store's load.
    encrypted = {row["variant"]: row for row in rows if row["key"] == "encrypted_load"}
    assert set(encrypted) == {"", "message_cache_bytes=0"}
    for row in encrypted.values():
        assert row["group"] == "in-memory" and row["unit"] == "µs"
    assert encryption.MISSING_NOTE not in report["notes"]
    assert {row["key"] for row in rows if row["group"] == "in-memory"} == {
        "turn",
        "load",
        "append",
        "pipeline_turn",
        "read_heavy",
        "long_history",
        "large_messages",
        "window_20",
        "window_200",
        "window_2000",
        "encrypted_load",
        "heap",
        "stream_chunk",
        "stream_chunk_io",
        "tool_round",
    }
    # Streamed and tool turns: a slope per chunk and per round, and what ours adds to the floor.
    targets = {"stream_chunk": 5, "stream_chunk_io": 5, "tool_round": 50}
    for row in rows:
        if row["key"] in targets:
            assert row["unit"] == "µs" and row["metric"] in ("per chunk", "per round")
            assert row["target"] == f"ours - floor <= {targets[row['key']]} µs"
            assert row["ok"] is (row["ours"] - row["floor"] <= targets[row["key"]])
    assert report["environment"]["redis_server"] is None
    assert any("in-memory" in note and "plot" in note for note in report["notes"])
    _assert_png(plot)


async def test_without_cryptography_the_encrypted_rows_are_skipped_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)  # makes `import cryptography` fail
    monkeypatch.setattr(scenarios, "SQLITE_SESSIONS", (1,))  # the SQLite rows, at 1 session only
    assert not encryption.available()
    options = BenchOptions.create(quick=True, sessions=(1,), turns=1)
    assert "encrypted_load" not in {item.key for item in memory.plan(options)}
    report = await run_suite(options)
    assert "encrypted_load" not in {row.key for row in report.rows}
    assert {row.group for row in report.rows} == {"in-memory", "sqlite"}
    assert report.notes.count(encryption.MISSING_NOTE) == 1
    assert (
        "\n" not in encryption.MISSING_NOTE and "chatstate[encryption]" in encryption.MISSING_NOTE
    )


async def _assert_keeps_what_the_store_keeps(
    store: StateStore, floor: Floor[Any], entry: Callable[[Message], Any]
) -> None:
    """The same appends (max 5, TTL) to session "s" of both give the same lengths, and the same
    histories, each message as ``entry`` gives it (as the floor decodes it)."""
    history = conversation(9, 50)
    for start in range(0, 9, 2):
        turn = history[start : start + 2]
        lengths = [await side.append("s", turn, max_messages=5, ttl=60) for side in (store, floor)]
        assert lengths[0] == lengths[1] == min(start + len(turn), 5)
    for limit in (None, 3, 20):
        assert await floor.load("s", limit=limit) == [
            entry(message) for message in await store.load("s", limit=limit)
        ]
    assert await floor.load("s") == [entry(message) for message in history[-5:]]
    assert await floor.load("none", limit=20) == []


@pytest.mark.parametrize(
    ("floor_class", "entry"),
    [
        (PydanticRedisFloor, lambda message: message),
        (NaiveDictRedisFloor, lambda message: {"role": message.role, "content": message.text}),
    ],
)
async def test_the_redis_floors_keep_what_the_store_keeps(
    redis_server: RedisServer,
    floor_class: type[HandWrittenRedisFloor[Any]],
    entry: Callable[[Message], Any],
) -> None:
    """Each floor does the store's work by hand, on a key of the store's layout: the same
    histories after the same appends, as Message objects (pydantic floor) or plain dicts of the
    role and text (naive dict floor), and the same expiry."""
    client = AsyncRedis.from_url(redis_server.url)
    store = RedisStateStore(client, prefix="bench-test-ours")
    floor = floor_class(client, "bench-test-floor")
    try:
        assert floor.key("s") == store.key("s").replace("bench-test-ours", "bench-test-floor")
        await _assert_keeps_what_the_store_keeps(store, floor, entry)
        assert 59_000 < await client.pttl(floor.key("s")) <= 60_000
    finally:
        await store.aclose()
        await client.delete(store.key("s"), store.key("s", "meta"), floor.key("s"))
        await client.aclose()


async def test_the_sqlite_floor_keeps_what_the_store_keeps(tmp_path: Path) -> None:
    """The floor does the store's work by hand: the same histories after the same appends."""
    floor = HandWrittenSQLiteFloor(str(tmp_path / "floor.db"))
    await floor.open()
    try:
        async with SQLiteStateStore(tmp_path / "ours.db") as store:
            await _assert_keeps_what_the_store_keeps(store, floor, lambda message: message)
    finally:
        await floor.aclose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sessions", "0"], "expected a positive integer, got '0'"),
        (["--sessions", "1,,100"], "expected numbers separated by commas"),
        (["--sessions", "many"], "expected a positive integer, got 'many'"),
        (["--turns", "0"], "argument --turns: expected a positive integer"),
        (["--repeats", "x"], "argument --repeats: expected a positive integer"),
        (["--history", "-5"], "argument --history: expected a positive integer"),
        (["--message-bytes", "1.5"], "argument --message-bytes: expected a positive integer"),
        (["--max-connections", "0"], "argument --max-connections"),
        (["--redis", "localhost:6379"], "expected a redis://host:port/db URL"),
        (["--redis", "rediss://alice:s3cret@host/0"], "rediss://alice:***@host/0"),
        (["--redis", "redis://localhost", "--redis-server"], "not allowed with argument"),
        (["--postgres", "localhost:5432"], "expected a postgresql://user@host:port/db URL"),
        (["--postgres", "postgresql://alice:s3cret@host/db", "--postgres-server"], "not allowed"),
        (["--json", "/no/such/dir/bench.json"], "no such directory: '/no/such/dir'"),
        (["--plot", "/no/such/dir/bench.png"], "no such directory"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *args]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert "s3cret" not in error


@pytest.mark.parametrize(
    ("module", "args"),
    [("rich", []), ("matplotlib", ["--plot", "bench.png"]), ("redis", ["--redis-server"])],
)
def test_a_missing_extra_is_one_line_with_the_install_command(
    module: str,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    assert main(["bench", "--quick", *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"{module} is not installed" in error
    assert 'pip install "chatstate[bench]"' in error


def test_an_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://bench:s3cret@127.0.0.1:{find_free_port()}/0"
    assert main(["bench", "--quick", "--no-progress", "--redis", url]) == 1
    error = capsys.readouterr().err
    assert f"cannot reach Redis at {url.replace('s3cret', '***')}" in error
    assert "Traceback" not in error and "s3cret" not in error


def test_messages_are_english_text_of_the_exact_size() -> None:
    text = english_text(2048)
    assert len(text.encode()) == 2048
    assert len(set(text.split())) > 150  # prose, not repeated characters
    first, second = conversation(2, 200)
    assert first.text != second.text and len(first.text) == len(second.text) == 200
    assert len(english_text(100_000, 3)) == 100_000


def test_targets_and_percentiles() -> None:
    assert Target.ratio_at_least(5.0).met(ours=10.0, ratio=5.0) is True
    assert Target.ratio_at_most(0.2).met(ours=1.0, ratio=0.3) is False
    assert Target.ours_at_most(25.0).met(ours=24.0, ratio=None) is True
    assert Target.ratio_at_least(1.0).describe("turns/s") == ">= 1 x floor"
    assert Target.ours_at_most(264).describe("B") == "ours <= 264 B"
    samples = [float(value) for value in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


@pytest.mark.slow
async def test_the_postgres_turn_runs_beside_its_floor(postgres_dsn: str) -> None:
    from chatstate.bench import postgres
    from chatstate.bench.measure import NoProgress

    options = BenchOptions.create(quick=True)
    async with postgres.PostgresBench.open(postgres_dsn) as bench:
        schemas = [bench.ours.schema, f"{bench.ours.schema}_floor"]
        items = postgres.plan(bench, options)
        assert [item.key for item in items] == ["turn@1", "turn@100"]
        rows = [row for item in items for row in (await item.run(NoProgress())).rows]
    ours = [row for row in rows if not row.variant]
    assert {row.metric for row in ours} == {"throughput", "load p50", "append p50"}
    for row in ours:
        assert row.group == "postgres" and row.ours > 0 and row.floor > 0
        assert (row.target is not None) == (row.metric == "throughput")
        assert row.round_trips is not None
        ours_trips, floor_trips = row.round_trips
        # Ours: one per call (fewer when concurrent appends share one); the floor: a load, and
        # BEGIN, SELECT, INSERT, DELETE, COMMIT: three per operation.
        assert floor_trips == pytest.approx(3.0, abs=0.05)
        assert ours_trips <= 1.0 if row.sessions == 100 else ours_trips == pytest.approx(1.0)
    assert {row.variant for row in rows} == {"", "in-memory store"}
    connection = await asyncpg.connect(postgres_dsn)
    try:
        left = await connection.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", schemas
        )
    finally:
        await connection.close()
    assert left == 0  # the run's schemas are dropped


def test_streamed_and_tool_turns_are_checked_on_what_ours_adds_to_the_floor() -> None:
    # The rows themselves are checked by the quick run above (slow-marked).
    options = BenchOptions.create(quick=True, sessions=(1,), turns=1)
    items = turns.plan(options)
    assert [item.key for item in items] == ["stream_chunk", "stream_chunk_io", "tool_round"]
    assert {item.group for item in items} == {"in-memory"}
    excess = Target.excess_at_most(5.0)
    assert excess.met(7.0, 7.0 / 3.0) is True and excess.met(9.0, 9.0 / 3.0) is False
    assert excess.met(1.0, None) is None
    assert excess.describe("µs") == "ours - floor <= 5 µs"


async def test_the_bench_tool_turn_makes_its_rounds_whatever_the_history() -> None:
    # The slope is only what it says if the long turn really calls its tool MANY times, turn
    # after turn, with earlier turns' results in the history.
    ping = Tool(name="ping", function=turns._ping)
    async with InMemoryStateStore() as store:
        pipe = turns._pipeline(turns._tool_model(turns.MANY), store, [ping])
        for _ in range(3):
            result = await pipe.execute("s", turns._USER)
            assert len(result.new_messages) == 2 + 2 * turns.MANY


@pytest.mark.redis
@pytest.mark.slow
def test_the_cluster_bench_starts_its_servers_and_measures_every_setup(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    command = [sys.executable, "-W", "error", "-m", "chatstate", "bench", "--redis-cluster"]
    done = subprocess.run(
        [*command, "--quick", "--sessions", "1,10", "--turns", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    setups = {(row["setup"], row["sessions"]) for row in figures["figures"]}
    assert setups == {(setup, sessions) for setup in SETUPS for sessions in (1, 10)}
    assert len(SETUPS) == 4
    assert all(row["turns_per_second"] > 0 for row in figures["figures"])
    assert figures["cores"] >= 1 and "cores" in done.stdout
