"""What the benchmark scripts share: the workload's messages, percentiles and the report."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chatstate import Message

PAYLOAD = "x" * 200
"""A 200-byte message, as in DESIGN.md section 4."""


def conversation(count: int) -> list[Message]:
    """``count`` messages of :data:`PAYLOAD`, user and assistant in turn."""
    roles = ("user", "assistant")
    return [Message(role=roles[index % 2], content=PAYLOAD) for index in range(count)]


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def environment(benchmark: str) -> dict[str, Any]:
    """The figures that say where and when a report was measured."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "message_bytes": len(PAYLOAD),
    }


def publish(table: str, report: dict[str, Any], json_path: str | None) -> None:
    """Print the table; write every figure to ``json_path`` if given."""
    print(table)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
