"""How a store retries a call that failed for a passing reason (a lost connection, a timeout)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from chatstate.errors import ConfigurationError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Retries with exponential backoff and full jitter.

    A call is tried at most ``attempts`` times. Before try ``n + 1`` it waits a random time between
    0 and ``min(max_backoff, backoff * 2 ** (n - 1))`` seconds (full jitter: instances that failed
    together do not come back in lockstep). ``RetryPolicy(attempts=1)`` never retries.

    Which calls are retried is the store's to say: the Redis store retries every call after a
    connection error or a timeout. Every write carries a write id that the session remembers, so
    a retry of a write that did land is recognised and not applied again.
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ConfigurationError(f"attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
            if not 0 <= value < float("inf"):
                raise ConfigurationError(f"{name} must be >= 0 and finite, got {value!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (failures - 1)))
