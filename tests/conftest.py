from __future__ import annotations

import contextlib
import gc
import ipaddress
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Before anything imports chatstate.testing, so that its assertions explain their failures.
pytest.register_assert_rewrite("chatstate.testing")

from chatstate import InMemoryStateStore, RedisStateStore  # noqa: E402
from chatstate.stores import BackendStore, SQLiteStateStore  # noqa: E402
from chatstate.testing import FakeClock  # noqa: E402
from chatstate.testing.postgres_server import (  # noqa: E402
    PostgresServer,
    local_postgres,
    scratch_database,
)
from chatstate.testing.redis_server import LocalRedisCluster, RedisServer  # noqa: E402

# Tests that need a real server (`make test-fast` leaves them out with -m "not redis and not
# postgres"): those that use these fixtures are marked here; a test that starts a server otherwise,
# or picks one by parameter, carries the mark itself (`kinds` marks the parameters), and
# `_unmarked_start_no_server` fails any test that starts a server without it.
SERVER_FIXTURES = {
    "redis": frozenset({"redis_server", "redis_cluster"}),
    "postgres": frozenset({"postgres_dsn", "postgres_admin"}),
}


def pytest_itemcollected(item: pytest.Item) -> None:
    # As each test is collected: before `-m` selects (a later hook would mark too late).
    for marker, fixtures in SERVER_FIXTURES.items():
        if fixtures.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(marker)


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_as_each_module_ends() -> Iterator[None]:
    # A connection left open when its event loop closed is found by the garbage collector, which
    # may run tests later, in whatever test happens to allocate: CI once failed a fakeredis test on
    # 128 such asyncio stream writers ("loop is closed") that none of its own code had opened.
    # Collected as each module ends (after its event loops, set up after this fixture), the
    # leak fails the module that made it, not a bystander.
    yield
    gc.collect()


def kinds(*names: str) -> list[Any]:
    """Parameters naming kinds of store; a kind that runs on a real server ("redis",
    "cached-redis", "redis-cluster", but not "fakeredis"; "postgres", "encrypted-postgres") is
    marked ``redis`` or ``postgres``."""
    params = []
    for name in names:
        marks = [
            getattr(pytest.mark, server) for server in SERVER_FIXTURES if server in name.split("-")
        ]
        params.append(pytest.param(name, marks=marks) if marks else name)
    return params


@pytest.fixture(autouse=True)
def _unmarked_start_no_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    for marker, server in (("redis", RedisServer), ("postgres", PostgresServer)):
        if request.node.get_closest_marker(marker) is not None:
            continue

        def refuse(self: object, timeout: float = 10.0, marker: str = marker) -> None:
            raise AssertionError(
                f"{request.node.nodeid} starts a {marker} server: mark it with pytest.mark.{marker}"
            )

        monkeypatch.setattr(server, "start", refuse)


__all__ = ["FakeClock"]  # tests import it from here, as they did before it moved

# `make test` runs every property with hypothesis's full count of examples; `make test-fast` loads
# this profile (`--hypothesis-profile=fast`): a fifth of them, enough to catch a broken property in
# a fast run, while the full run searches harder (and the example database replays what it found).
settings.register_profile("fast", max_examples=20)


def examples(full: int) -> int:
    """``max_examples`` for a property that wants ``full`` examples in the full run: scaled by
    the loaded profile (all of them by default, a fifth under the "fast" profile)."""
    default = settings.get_profile("default").max_examples
    return max(1, full * settings.default.max_examples // default)


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


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The admin DSN of a PostgreSQL server: the one on 127.0.0.1:5432 if it answers, else one
    started for the test session (never a skip)."""
    with local_postgres() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def postgres_dsn(postgres_admin: str) -> Iterator[str]:
    """A database of this test session's own, dropped at the end; tests keep apart by schema."""
    with scratch_database(postgres_admin) as dsn:
        yield dsn


@pytest.fixture
def pg_schema() -> str:
    """A PostgreSQL schema name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def store_of_kind(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, **options: Any
) -> AsyncIterator[BackendStore[Any]]:
    """An empty store of ``kind`` ("memory", "sqlite", "fakeredis", "redis" on the test
    session's server, "postgres" in a schema of the test's own), built with ``options``."""
    if kind == "memory":
        async with InMemoryStateStore(**options) as memory:
            yield memory
    elif kind == "sqlite":
        async with SQLiteStateStore(tmp_path / f"{uuid.uuid4().hex[:8]}.db", **options) as sqlite:
            yield sqlite
    elif kind == "postgres":
        from chatstate.stores.postgres import PostgresStateStore

        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        async with PostgresStateStore.from_url(dsn, schema=schema, **options) as postgres:
            yield postgres
    else:
        import fakeredis
        from redis.asyncio import Redis

        if kind == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            client: Any = Redis.from_url(server.url)
        else:
            client = fakeredis.FakeAsyncRedis()
        prefix = request.getfixturevalue("key_prefix")
        try:
            async with RedisStateStore(client, prefix=prefix, **options) as redis_store:
                yield redis_store
        finally:
            await client.aclose()


BACKEND_KINDS = kinds("memory", "sqlite", "fakeredis", "redis", "postgres")
"""The kinds of store the backend-level and history tests run on."""


@pytest.fixture(params=BACKEND_KINDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A backend of each kind, empty (its store's): what tests of the storage interface itself
    run on."""
    async with store_of_kind(request.param, request, tmp_path) as store:
        yield store.backend


INTEGRATION_KINDS = kinds("memory", "sqlite", "redis")
"""The kinds of store the framework integrations are tested on."""


def new_chat_store(request: pytest.FixtureRequest, tmp_path: Path) -> BackendStore[Any]:
    """A store of the kind ``request.param`` names (one of :data:`INTEGRATION_KINDS`): in
    memory, a SQLite file, the session's real redis-server (under a prefix of the test's own)."""
    if request.param == "memory":
        return InMemoryStateStore()
    if request.param == "sqlite":
        return SQLiteStateStore(tmp_path / "chat.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisStateStore.from_url(server.url, prefix=request.getfixturevalue("key_prefix"))


@pytest.fixture(params=INTEGRATION_KINDS)
async def chat_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BackendStore[Any]]:
    """A store of each kind the framework integrations are tested on."""
    async with new_chat_store(request, tmp_path) as store:
        yield store


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test uses, so tests sharing a server never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The backends of the tests marked ``anyio`` (``pytestmark = pytest.mark.anyio`` in a
    module): each runs on asyncio and on trio. Every other async test runs on asyncio alone."""
    return str(request.param)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-asyncio's auto mode claims every async test, even those marked ``anyio``: give
    those back to anyio's plugin (a plain ``pytest.Function``), which runs each on the backend
    of its ``anyio_backend`` fixture (tests/test_backends.py checks that trio runs are on trio)."""
    for index, item in enumerate(items):
        if type(item) is pytest.Function or item.get_closest_marker("anyio") is None:
            continue
        assert isinstance(item, pytest.Function) and item.parent is not None
        plain = pytest.Function.from_parent(
            item.parent,
            name=item.name,
            callspec=getattr(item, "callspec", None),
            callobj=item.obj,
            fixtureinfo=item._fixtureinfo,
            keywords=item.keywords,
            originalname=item.originalname,
        )
        plain.own_markers = [mark for mark in item.own_markers if mark.name != "asyncio"]
        items[index] = plain
