"""Export to JSON Lines, import, and fork, on every built-in store (and through encryption)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from chatstate import (
    ConfigurationError,
    Encryption,
    InMemoryStateStore,
    InvalidInputError,
    Message,
    RedisStateStore,
    SessionExistsError,
    SessionNotFoundError,
    StateStore,
    ToolCall,
    export_sessions,
    fork_session,
    import_sessions,
)
from chatstate.sessions import Conversations
from chatstate.stores.sqlite import SQLiteStateStore
from chatstate.testing.redis_server import RedisServer
from chatstate.transfer import EXPORT_FORMAT

from .conftest import FakeClock, kinds
from .redis_time import advance_redis_time

NOW = 1_700_000_000.0


def _conversation(tag: str) -> list[Message]:
    return [
        Message(role="system", content=f"You are terse ({tag})."),
        Message(role="user", content=f"Weather in Paris? ({tag}) ünï 🌍"),
        Message(
            role="assistant",
            tool_calls=[ToolCall(id="c1", name="weather", arguments={"city": "Paris"})],
        ),
        Message(role="tool", content="18 °C", tool_call_id="c1"),
        Message(role="assistant", content="18 °C.", metadata={"model": "x", "n": [1, 2]}),
    ]


async def _summarise(store: Any, session_id: str, text: str) -> None:
    async def fold(history: list[Message], summary: Message | None) -> tuple[int, Message]:
        return 1, Message(role="system", content=text)

    assert await store.compact(session_id, fold) is True


class Stores:
    """Makes stores of one kind, all seeing one fake clock (Redis: its keys' deadlines moved)."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, folder: Path) -> None:
        self.kind, self.request, self.folder = kind, request, folder
        self.clock = FakeClock(NOW)
        self.made: list[StateStore] = []
        self.prefix = f"{request.getfixturevalue('key_prefix')}-" if "redis" in kind else ""

    def __call__(self) -> Any:
        clock, name = self.clock, secrets.token_hex(4)
        store: StateStore
        if self.kind == "redis":
            server: RedisServer = self.request.getfixturevalue("redis_server")
            store = RedisStateStore.from_url(server.url, prefix=self.prefix + name)
        elif self.kind == "memory":
            store = InMemoryStateStore(clock=clock)
        else:
            keys = Encryption(keys={"k": b"k" * 32}) if self.kind == "encrypted-sqlite" else None
            store = SQLiteStateStore(self.folder / f"{name}.db", clock=clock, encryption=keys)
        self.made.append(store)
        return store

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        if self.kind == "redis":
            server: RedisServer = self.request.getfixturevalue("redis_server")
            async with Redis.from_url(server.url) as client:
                await advance_redis_time(client, seconds, match=f"{self.prefix}*")


@pytest.fixture(params=kinds("memory", "sqlite", "redis", "encrypted-sqlite"))
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    stores = Stores(request.param, request, tmp_path)
    yield stores
    for store in stores.made:
        await store.aclose()


@pytest.fixture
def clock(make: Stores) -> FakeClock:
    return make.clock


async def _lines(store: StateStore, ids: list[str], clock: FakeClock) -> list[str]:
    return [line async for line in export_sessions(store, ids, clock=clock)]


async def test_an_export_imports_back_whole(make: Stores, clock: FakeClock) -> None:
    source, target = make(), make()
    await source.append("a", _conversation("a"), ttl=3600)
    await _summarise(source, "a", "earlier: the user greeted")
    await source.append("b", _conversation("b"))
    lines = await _lines(source, ["a", "nobody", "b"], clock)
    assert len(lines) == 2 and all(line.endswith("\n") for line in lines)
    first = json.loads(lines[0])
    assert first["format"] == EXPORT_FORMAT and first["session_id"] == "a"
    assert first["messages"][0] == {"role": "user", "content": "Weather in Paris? (a) ünï 🌍"}
    assert first["summary"] == {"role": "system", "content": "earlier: the user greeted"}
    expires_at = datetime.fromisoformat(first["expires_at"])
    assert expires_at.tzinfo is not None and abs(expires_at.timestamp() - (NOW + 3600)) < 1
    assert json.loads(lines[1])["expires_at"] is None

    report = await import_sessions(target, lines, clock=clock)
    assert report.imported == ["a", "b"] and not report.skipped and not report.expired
    assert await target.load_with_summary("a") == await source.load_with_summary("a")
    assert await target.load("b") == _conversation("b")
    await make.advance(3600)
    assert await target.load("a") == [] and await target.load("b") == _conversation("b")


async def test_an_import_checks_every_line_before_writing_any(
    make: Stores, clock: FakeClock
) -> None:
    store = make()
    good = (await _lines(await _filled(make, "ok"), ["ok"], clock))[0]
    line = json.loads(good)
    bad_lines = {
        "not JSON": "{",
        "not a chatstate": json.dumps({"format": "other/1"}),
        "session id": json.dumps({**line, "session_id": "a\nb"}),
        "non-empty list": json.dumps({**line, "messages": []}),
        "invalid message": json.dumps({**line, "messages": [{"role": "tool", "content": "x"}]}),
        "expires_at": json.dumps({**line, "expires_at": "tomorrow"}),
        "with its UTC offset": json.dumps({**line, "expires_at": "2030-01-01T00:00:00"}),
        "nested too deeply": '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "appears twice": good,
    }
    for problem, bad in bad_lines.items():
        with pytest.raises(InvalidInputError, match=problem) as caught:
            await import_sessions(store, [good, "", bad], clock=clock)
        assert "line 3" in str(caught.value)
        assert await store.load("ok") == []  # nothing of the import was written


async def _filled(make: Stores, *ids: str) -> Any:
    store = make()
    for session_id in ids:
        await store.append(session_id, _conversation(session_id))
    return store


async def test_conflicts_raise_skip_or_overwrite(make: Stores, clock: FakeClock) -> None:
    lines = await _lines(await _filled(make, "x", "y"), ["x", "y"], clock)
    store = make()
    await store.append("y", [Message(role="user", content="mine")])
    with pytest.raises(SessionExistsError, match="'y' exists already; nothing was imported"):
        await import_sessions(store, lines, clock=clock)
    assert await store.load("x") == []
    report = await import_sessions(store, lines, on_conflict="skip", clock=clock)
    assert report.imported == ["x"] and report.skipped == ["y"]
    assert await store.load("y") == [Message(role="user", content="mine")]
    report = await import_sessions(store, lines, on_conflict="overwrite", clock=clock)
    assert report.imported == ["x", "y"] and await store.load("y") == _conversation("y")
    with pytest.raises(ConfigurationError, match="on_conflict"):
        await import_sessions(store, lines, on_conflict="merge")  # type: ignore[arg-type]


async def test_expiry_is_kept_or_replaced(make: Stores, clock: FakeClock) -> None:
    source = make()
    await source.append("short", _conversation("s"), ttl=10)
    await source.append("long", _conversation("l"), ttl=100)
    lines = await _lines(source, ["short", "long"], clock)
    await make.advance(20)  # the import comes later: "short" is already past its time
    store = make()
    report = await import_sessions(store, lines, clock=clock)
    assert report.imported == ["long"] and report.expired == ["short"]
    await make.advance(80)
    assert await store.load("long") == []  # it kept its recorded expiry
    report = await import_sessions(make(), lines, ttl=None, clock=clock)
    assert report.imported == ["short", "long"]


async def test_a_fork_branches_a_conversation(make: Stores) -> None:
    store = make()
    await store.append("main", _conversation("m"), ttl=600)
    await _summarise(store, "main", "summary of main")
    copied = await fork_session(store, "main", "branch")
    assert copied.messages == _conversation("m")[1:] and copied.ttl is not None
    assert await store.load_with_summary("branch") == await store.load_with_summary("main")
    await store.append("branch", [Message(role="user", content="only on the branch")], ttl=600)
    assert len(await store.load("main")) == 4 and len(await store.load("branch")) == 5

    with pytest.raises(SessionExistsError, match="'branch' exists already"):
        await fork_session(store, "main", "branch")
    assert len(await store.load("branch")) == 5  # untouched
    await fork_session(store, "main", "branch", overwrite=True, ttl=None)
    assert len(await store.load("branch")) == 4
    with pytest.raises(SessionNotFoundError, match="'nobody' does not exist"):
        await fork_session(store, "nobody", "new")
    with pytest.raises(InvalidInputError, match="into itself"):
        await fork_session(store, "main", "main")
    assert await store.load("new") == []


async def test_a_fork_copies_one_instant_while_turns_go_on(make: Stores) -> None:
    store = make()
    turns = 30

    def turn(number: int) -> list[Message]:
        return [
            Message(role="user", content=f"q{number}"),
            Message(role="assistant", content=f"a{number}"),
        ]

    await store.append("busy", turn(0))  # every fork has a source

    async def talk() -> None:
        for number in range(1, turns):
            await store.append("busy", turn(number))
            await asyncio.sleep(0)

    async def forks() -> list[list[Message]]:
        copies = []
        for number in range(10):
            await asyncio.sleep(0)
            copies.append((await fork_session(store, "busy", f"fork-{number}")).messages)
        return copies

    _, copies = await asyncio.gather(talk(), forks())
    final = await store.load("busy")
    assert len(final) == 2 * turns
    assert len(copies) == 10
    assert len(copies[0]) < len(final)  # the first fork ran while the turns went on
    for number, copy in enumerate(copies):
        # Each a whole number of turns: the history as it stood at one instant, and stored.
        assert len(copy) >= 2 and len(copy) % 2 == 0 and copy == final[: len(copy)]
        assert await store.load(f"fork-{number}") == copy
    assert [len(copy) for copy in copies] == sorted(len(copy) for copy in copies)


async def test_every_session_of_a_user_exports(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    async with SQLiteStateStore(tmp_path / "c.db", clock=clock) as store:
        conversations = Conversations(store, clock=clock)
        for cid in ("c1", "c2"):
            clock.advance(1)
            await store.append(await conversations.record("ada", cid), _conversation(cid))
        await store.append(conversations.user_session("ada"), _conversation("profile"))
        await store.append(await conversations.record("bob", "c1"), _conversation("bob"))
        ids = await conversations.session_ids("ada")
        assert ids == ["user-ada-conv-c2", "user-ada-conv-c1", "user-ada"]
        lines = await _lines(store, ids, clock)
        assert [json.loads(line)["session_id"] for line in lines] == ids
        every = [line async for line in export_sessions(store, store.session_ids(), clock=clock)]
        assert len(every) == 4


async def test_a_store_without_whole_session_access_is_named() -> None:
    class Minimal:
        async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
            return []

    with pytest.raises(ConfigurationError, match="Minimal cannot read and write whole"):
        await fork_session(Minimal(), "a", "b")


async def test_an_import_reads_bytes_and_async_lines() -> None:
    clock = FakeClock(NOW)
    source = InMemoryStateStore(clock=clock)
    await source.append("s", _conversation("s"))
    lines = await _lines(source, ["s"], clock)

    async def stream() -> AsyncIterator[bytes]:
        for line in lines:
            yield line.encode()

    target = InMemoryStateStore(clock=clock)
    assert (await import_sessions(target, stream(), clock=clock)).imported == ["s"]
    assert await target.load("s") == _conversation("s")


async def test_redis_to_sqlite_and_back(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    async with Redis.from_url(redis_server.url) as client:
        redis_store = RedisStateStore(client, prefix=key_prefix)
        await redis_store.append("s", _conversation("r"), ttl=300)
        async with SQLiteStateStore(tmp_path / "c.db") as sqlite_store:
            lines = [line async for line in export_sessions(redis_store, ["s"])]
            await import_sessions(sqlite_store, lines)
            assert await sqlite_store.load("s") == _conversation("r")
            snapshot = await sqlite_store.snapshot("s")
            assert snapshot is not None and snapshot.ttl is not None and 290 < snapshot.ttl <= 300


async def test_an_import_refuses_a_line_that_is_not_utf8() -> None:
    store = InMemoryStateStore()
    with pytest.raises(InvalidInputError, match="line 2 is not UTF-8"):
        await import_sessions(store, [b"", b'{"format": "\xff"}'])


async def test_an_import_run_again_with_its_write_id_counts_its_own_sessions() -> None:
    store = InMemoryStateStore()
    lines = [
        json.dumps(
            {
                "format": EXPORT_FORMAT,
                "session_id": name,
                "messages": [{"role": "user", "content": name}],
            }
        )
        for name in ("a", "b")
    ]
    first = await import_sessions(store, lines, write_id="import-1")
    again = await import_sessions(store, lines, write_id="import-1")  # a retry: no conflict
    assert first.imported == again.imported == ["a", "b"]
    assert await store.load("a") == [Message(role="user", content="a")]
    with pytest.raises(SessionExistsError):
        await import_sessions(store, lines, write_id="import-2")
    with pytest.raises(InvalidInputError):
        await import_sessions(store, lines, write_id="")


async def test_an_export_carries_the_ids_and_an_import_checks_them() -> None:
    store = InMemoryStateStore()
    await store.append("s", [Message(role="user", content=text) for text in "abc"])
    await store.pop("s")
    await store.append("s", [Message(role="user", content="d")])
    (line,) = [line async for line in export_sessions(store, ["s"])]
    assert json.loads(line)["ids"] == ["0", "1", "3"]
    bad = json.loads(line) | {"ids": ["0", "1"]}
    with pytest.raises(InvalidInputError, match="line 1: a snapshot's ids"):
        await import_sessions(InMemoryStateStore(), [json.dumps(bad)])
    old = json.loads(line)
    del old["ids"]  # as 0.1.0 wrote it: ids made afresh
    other = InMemoryStateStore()
    await import_sessions(other, [json.dumps(old)])
    assert (await other.history("s")).ids == ["0", "1", "2"]
