from __future__ import annotations

import functools
import ipaddress
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Before anything imports chatstate.testing, so that its assertions explain their failures.
pytest.register_assert_rewrite("chatstate.testing")

from chatstate.testing.redis_server import LocalRedisCluster, RedisServer  # noqa: E402


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _is_local(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # a Unix socket path
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ``anyio`` runs through anyio's plugin, on the event loop its
    ``anyio_backend`` names (asyncio or trio). pytest-asyncio's auto mode claims every async
    test and would run it on asyncio whatever that fixture says; so such a test is run as a
    plain pytest function, which anyio's ``pytest_pyfunc_call`` takes. Its fixtures must then be
    plain ones: pytest-asyncio runs async fixtures on asyncio."""
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker("anyio") is not None:
            item.runtest = functools.partial(pytest.Function.runtest, item)  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any connection to a non-loopback address fails the test: no test may reach a real model
    provider or any other outside service."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guard(address: Any) -> None:
        if not _is_local(address):
            raise AssertionError(f"a test tried to reach the network: {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        guard(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        guard(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole test session; tests keep apart by key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A real 3-master Redis Cluster for the whole test session."""
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test uses, so tests sharing a server never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}"
