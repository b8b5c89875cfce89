"""What encryption costs a load: an EncryptedStore around a store beside the same kind of store
unencrypted, in the same run. Needs the cryptography package (the ``encryption`` extra); without
it these scenarios are left out and a note says so."""

from __future__ import annotations

import secrets
from dataclasses import asdict

from chatstate.bench import scenarios
from chatstate.bench.measure import Progress, compare_batches
from chatstate.bench.options import BenchOptions
from chatstate.bench.results import Measured, Row
from chatstate.bench.workload import Params, Workload
from chatstate.stores.base import StateStore
from chatstate.stores.memory import InMemoryStateStore

UNCACHED = "message_cache_bytes=0"
"""The variant that decrypts every message of every load: what decryption itself costs."""

MISSING_NOTE = (
    "encryption: the cryptography package is not installed, so the encrypted_load rows were "
    'skipped (pip install "chatstate[encryption]")'
)


def available() -> bool:
    """Whether EncryptedStore can be used here (the cryptography package is installed)."""
    try:
        import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401

        import chatstate.stores.encrypted  # noqa: F401
    except ImportError:
        return False
    return True


def encrypted_sides(
    plain: StateStore, inner: StateStore, params: Params
) -> tuple[StateStore, dict[str, Workload]]:
    """The encrypted store to seed, and the sides of the comparison: ``inner`` encrypted with the
    default message cache (ours) and with none (every message decrypted on every load; both
    wrappers read the same stored entries), beside ``plain`` (the floor)."""
    from chatstate.stores.encrypted import EncryptedStore

    keys = {"bench": secrets.token_bytes(32)}
    cached = EncryptedStore(inner, keys=keys)
    uncached = EncryptedStore(inner, keys=keys, message_cache_bytes=0)
    scenario = scenarios.ENCRYPTED_LOAD
    return cached, {
        "ours": scenario.ours(cached, params),
        UNCACHED: scenario.ours(uncached, params),
        "floor": scenario.floor(plain, params),
    }


async def in_memory_load(options: BenchOptions, progress: Progress) -> Measured:
    """``EncryptedStore(InMemoryStateStore())`` loads beside plain ``InMemoryStateStore`` loads,
    timed in batches as the in-memory suite times its scenarios (microseconds per load)."""
    scenario = scenarios.ENCRYPTED_LOAD
    params = scenario.params(options)
    ids = [f"{scenario.key}-{index}" for index in range(scenario.sessions(max(options.sessions)))]
    async with (
        InMemoryStateStore(max_sessions=None) as plain,
        InMemoryStateStore(max_sessions=None) as inner,
    ):
        encrypted, sides = encrypted_sides(plain, inner, params)
        progress.detail("seeding")
        await scenarios.seed((plain, encrypted), ids, scenario.seed_count(options), params)
        figures = await compare_batches(
            sides,
            ids,
            turns=len(ids) * options.turns,
            rounds=options.repeats,
            progress=progress,
        )
    rows = [
        Row(
            group="in-memory",
            key=scenario.key,
            scenario=scenario.describe(options),
            variant="" if side == "ours" else side,
            metric="time per turn",
            unit="µs",
            ours=figures[side].us_per_turn,
            floor=figures["floor"].us_per_turn,
        )
        for side in sides
        if side != "floor"
    ]
    details = {"sessions": len(ids), **{side: asdict(value) for side, value in figures.items()}}
    return Measured(rows, details)
