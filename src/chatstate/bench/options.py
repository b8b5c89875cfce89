"""The knobs of a benchmark run, and the error a run that cannot go on raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class BenchError(Exception):
    """A run cannot start or go on (no server to reach, say); the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    """What a run measures and how long it takes.

    - ``sessions``: the concurrency levels of the Redis turn scenario (concurrent sessions); the
      other Redis scenarios run at :attr:`secondary_sessions`. In-memory scenarios cycle through
      ``max(sessions)`` sessions.
    - ``turns``: turns per session and round (in-memory: ``max(sessions) * turns`` per round).
    - ``history``: messages kept and loaded per session (``max_messages`` and ``limit``).
    - ``message_bytes``: the size of each message's text.
    - ``repeats``: measured rounds per side, alternating with the floor.
    - ``max_connections``: the Redis pool size, shared by both sides.
    """

    sessions: tuple[int, ...] = (1, 100, 1000)
    turns: int = 20
    history: int = 20
    message_bytes: int = 200
    repeats: int = 3
    max_connections: int = 100
    quick: bool = False

    @classmethod
    def create(
        cls,
        *,
        quick: bool = False,
        turns: int | None = None,
        repeats: int | None = None,
        **options: Any,
    ) -> BenchOptions:
        """Options with the defaults of a full run, or of a ``quick`` smoke run (a few turns, one
        round): anything given explicitly wins."""
        if turns is None:
            turns = 3 if quick else 20
        if repeats is None:
            repeats = 1 if quick else 3
        return cls(quick=quick, turns=turns, repeats=repeats, **options)

    @property
    def secondary_sessions(self) -> int:
        """Where the Redis scenarios other than the headline turn run: the largest level up to
        100 (the smallest level if all are larger); a full run's time stays in minutes."""
        return max((level for level in self.sessions if level <= 100), default=min(self.sessions))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "sessions": list(self.sessions)}
