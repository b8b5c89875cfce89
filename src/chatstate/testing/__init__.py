"""Helpers for testing with chatstate and for authors of stores.

- :class:`StateStoreConformance`: the test suite every store passes (needs pytest and
  pytest-asyncio; imported on first use). For readable assertion failures, call
  ``pytest.register_assert_rewrite("chatstate.testing")`` in your ``conftest.py`` first.
- :class:`RedisServer`, :class:`LocalRedisCluster`: throw-away local Redis servers.
- :class:`FakeClock`: a :class:`~chatstate.clock.Clock` that moves only when the test moves it.
"""

from typing import TYPE_CHECKING, Any

from chatstate.testing.clock import FakeClock
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer

if TYPE_CHECKING:
    from chatstate.testing.conformance import StateStoreConformance, sample_conversation

__all__ = [
    "FakeClock",
    "LocalRedisCluster",
    "RedisServer",
    "StateStoreConformance",
    "sample_conversation",
]


def __getattr__(name: str) -> Any:
    # The suite imports pytest, which only tests need: load it when it is asked for.
    if name in ("StateStoreConformance", "sample_conversation"):
        from chatstate.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'chatstate.testing' has no attribute {name!r}")
