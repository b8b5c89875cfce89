"""The scenarios both suites run, each a workload for our store beside one for its floor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from chatstate.bench import workload as w
from chatstate.bench.options import BenchOptions
from chatstate.bench.workload import Backend, Floor, Params, Workload
from chatstate.stores.base import StateStore


@dataclass(frozen=True, slots=True)
class Scenario:
    """What every session does per turn, on our store and on its floor."""

    key: str
    """The scenario's name in the JSON report."""
    title: str
    """For the table; ``{history}`` and ``{seed}`` are filled in."""
    ours: Callable[[StateStore, Params], Workload]
    floor: Callable[[Backend, Params], Workload]
    unit: str
    """What a Redis round counts per second: ``turns/s``, ``loads/s``, ... or ``ops/s``, which
    counts every step (load or append) of a turn."""
    _: KW_ONLY
    seed: int | None = None
    """Messages stored per session before measuring; None: ``history``."""
    message_bytes: int | None = None
    """None: the run's ``message_bytes``."""
    history: int | None = None
    """Messages loaded per session (and seeded, unless ``seed`` says otherwise); None: the
    run's ``history``."""
    max_sessions: int | None = None
    """At most this many sessions (a long history times many sessions would fill the memory)."""
    floor_is_ours: bool = False
    """The floor runs on our store too: the scenario measures what a step adds to our own call."""
    counted: bool = False
    """Seed messages with their token counts, as a store with token budgets on holds them."""

    def params(self, options: BenchOptions, *, fresh: bool = False) -> Params:
        size = self.message_bytes if self.message_bytes is not None else options.message_bytes
        return Params.of(
            history=self.history_of(options), message_bytes=size, fresh=fresh, counted=self.counted
        )

    def history_of(self, options: BenchOptions) -> int:
        return self.history if self.history is not None else options.history

    def seed_count(self, options: BenchOptions) -> int:
        return self.seed if self.seed is not None else self.history_of(options)

    def sessions(self, count: int) -> int:
        """How many sessions of ``count`` the scenario runs."""
        return count if self.max_sessions is None else min(count, self.max_sessions)

    def describe(self, options: BenchOptions) -> str:
        return self.title.format(history=self.history_of(options), seed=self.seed_count(options))

    def floor_backend(self, ours: StateStore, floor: Floor[Any]) -> Backend:
        return ours if self.floor_is_ours else floor

    def workloads(self, ours: StateStore, floor: Floor[Any], params: Params) -> dict[str, Workload]:
        return {
            "ours": self.ours(ours, params),
            "floor": self.floor(self.floor_backend(ours, floor), params),
        }


LOAD = Scenario("load", "load(limit={history}) of {seed}", w.load_only, w.load_only, "loads/s")
APPEND = Scenario(
    "append", "append 2 (max {history}, ttl)", w.append_only, w.append_only, "appends/s"
)
TURN = Scenario("turn", "turn: load {history} + append 2", w.turn, w.turn, "turns/s")
PIPELINE_TURN = Scenario(
    "pipeline_turn",
    "pipeline turn, instant provider",
    w.pipeline_turn,
    w.hand_written_turn,  # the same work by hand, with no middleware chain
    "turns/s",
)
LAZY_TURN = Scenario(
    "lazy_turn",
    "turn answered without the history, lazy=True",
    w.lazy_command_turn,
    w.hand_written_command_turn,
    "turns/s",
)
"""Redis only: what lazy loading saves on turns that never read the history (beside the same
turn with ``lazy=False``, round trips included)."""
READ_HEAVY = Scenario(
    "read_heavy",
    f"read-heavy: {w.READS_PER_WRITE} loads per append",
    w.read_heavy,
    w.read_heavy,
    "ops/s",
)
LONG_HISTORY = Scenario(
    "long_history",
    "load all of {seed:,} (max_messages=-1)",
    w.load_all,
    w.load_all,
    "loads/s",
    seed=w.LONG_HISTORY,
)
LARGE_MESSAGES = Scenario(
    "large_messages",
    f"turn, {w.LARGE_MESSAGE_BYTES // 1024} KiB messages",
    w.turn,
    w.turn,
    "turns/s",
    message_bytes=w.LARGE_MESSAGE_BYTES,
)

CACHED_LOAD = Scenario(
    "cached_load",
    "warm load(limit={history}) of {seed}, near cache",
    w.load_only,
    w.load_only,
    "loads/s",
)
"""Redis only: loads through a near cache (NearCache) that holds the sessions, beside plain Redis
loads and the in-memory store."""

ENCRYPTED_LOAD = Scenario(
    "encrypted_load",
    "encrypted load(limit={history}) of {seed}, vs the plain load",
    w.load_only,
    w.load_only,
    "loads/s",
    max_sessions=100,
)
"""What encryption adds to a load: a store with encryption=, beside the same kind of store
unencrypted; at most 100 sessions, whose messages the default message cache holds (a cache that
cycles through more sessions than it holds would miss on every load)."""

SQLITE: Sequence[Scenario] = (LOAD, APPEND, TURN)
"""What the SQLite suite measures, at :data:`SQLITE_SESSIONS` concurrent sessions."""

SQLITE_SESSIONS: Sequence[int] = (1, 100)

WINDOWS: Sequence[Scenario] = tuple(
    Scenario(
        f"window_{count}",
        "load {history:,} + token window, vs the plain load",
        w.windowed_load,
        w.load_only,
        "loads/s",
        history=count,
        max_sessions=sessions,
        floor_is_ours=True,
        counted=True,
    )
    for count, sessions in ((20, None), (200, 100), (2000, 20))
)
"""What a token budget adds to a load: the load and the window of a history whose messages all
fit (the longest walk), beside the same store's plain load, for 20, 200 and 2,000 messages."""

SECONDARY: Sequence[Scenario] = (
    LOAD,
    APPEND,
    PIPELINE_TURN,
    READ_HEAVY,
    LONG_HISTORY,
    LARGE_MESSAGES,
)
"""Beside the headline turn: what each suite also measures."""


async def seed(
    backends: Sequence[Backend], session_ids: Sequence[str], count: int, params: Params
) -> None:
    """Store ``count`` messages in every session of every backend, as a lived-in app has them."""
    if count <= 0:
        return
    for backend in backends:
        for session_id in session_ids:
            await backend.append(session_id, params.history_of(count), ttl=params.ttl)
