"""What encryption costs a load: a store with ``encryption=`` beside the same kind of store
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
from chatstate.stores import BackendStore, Encryption
from chatstate.stores._codec import EntryCodec
from chatstate.stores.base import StateStore
from chatstate.stores.memory import InMemoryStateStore

UNCACHED = "message_cache_bytes=0"
"""The variant that decrypts every message of every load: what decryption itself costs."""

MISSING_NOTE = (
    "encryption: the cryptography package is not installed, so the encrypted_load rows were "
    'skipped (pip install "chatstate[encryption]")'
)


def available() -> bool:
    """Whether encryption can be used here (the cryptography package is installed)."""
    try:
        import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
    except ImportError:
        return False
    return True


def encryption() -> Encryption:
    """The keys of a run: one random key."""
    return Encryption(keys={"bench": secrets.token_bytes(32)})


def encrypted_sides(
    plain: StateStore, cached: StateStore, uncached: StateStore, params: Params
) -> dict[str, Workload]:
    """The sides of the comparison: an encrypted store with the default message cache (ours) and
    one with none over the same stored entries (every message decrypted on every load), beside
    ``plain`` (the floor)."""
    scenario = scenarios.ENCRYPTED_LOAD
    return {
        "ours": scenario.ours(cached, params),
        UNCACHED: scenario.ours(uncached, params),
        "floor": scenario.floor(plain, params),
    }


async def in_memory_load(options: BenchOptions, progress: Progress) -> Measured:
    """``InMemoryStateStore(encryption=...)`` loads beside plain ``InMemoryStateStore`` loads,
    timed in batches as the in-memory suite times its scenarios (microseconds per load)."""
    scenario = scenarios.ENCRYPTED_LOAD
    params = scenario.params(options)
    ids = [f"{scenario.key}-{index}" for index in range(scenario.sessions(max(options.sessions)))]
    keys = encryption()
    async with (
        InMemoryStateStore(max_sessions=None) as plain,
        InMemoryStateStore(max_sessions=None, encryption=keys) as encrypted,
    ):
        # The same sealed entries, read by a codec that remembers nothing.
        uncached = BackendStore(encrypted.backend, codec=EntryCodec(cache_bytes=0, encryption=keys))
        sides = encrypted_sides(plain, encrypted, uncached, params)
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
