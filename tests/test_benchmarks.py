"""The benchmarks run and report both sides of every comparison (their figures are not tested:
timing assertions do not belong in unit tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chatstate.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str, out: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, object] = json.loads(out.read_text())
    return report


def test_the_memory_benchmark_compares_with_its_floor(tmp_path: Path) -> None:
    report = _bench("memory_store.py", "--quick", "--rounds", "3", out=tmp_path / "m.json")
    results = report["results"]
    assert isinstance(results, list) and len(results) == 5
    for row in results:
        assert row["ours_p50_us"] > 0 and row["floor_p50_us"] > 0
        assert row["ratio"] == row["ours_p50_us"] / row["floor_p50_us"]
    memory = report["memory"]
    assert isinstance(memory, dict) and memory["ours_bytes_per_session"] > 0


def test_the_redis_benchmark_compares_with_its_floor(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    report = _bench(
        "redis_store.py",
        "--redis",
        redis_server.url,
        "--sessions",
        "1,20",
        "--turns",
        "2",
        "--repeats",
        "1",
        out=tmp_path / "r.json",
    )
    scenarios = report["scenarios"]
    assert isinstance(scenarios, list) and [row["sessions"] for row in scenarios] == [1, 20]
    for row in scenarios:
        ours, floor = row["ours"], row["floor"]
        assert row["throughput_ratio"] == ours["turns_per_s"] / floor["turns_per_s"]
        assert 0 < ours["round_trips_per_turn"] <= 2.0  # fewer when concurrent calls share writes
        assert floor["round_trips_per_turn"] == 2.0
    memory = report["memory"]
    assert isinstance(memory, dict) and memory["stored_bytes_per_message"] > 200
