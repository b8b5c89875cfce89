"""Exactly-once writes against real redis-servers, whatever the network does (issue 16).

Every write operation (append, save, delete, restore, a fold, and the transfers fork_session and
import_sessions) meets every fault: its reply delayed past the client's timeout (``DEBUG SLEEP``
on a server started with ``--enable-debug-command yes``), its connection dropped after it was
sent (the reply lost), its caller cancelled while it runs, and the server killed (SIGKILL) after
it ran and restarted from its AOF (``appendfsync always``). Each is retried, by the store's own
retry policy (delays pinned, so the interleaving is the test's and not luck's) or by the caller
as documented (``write_id=error.write_id``; a cancelled caller gives its id up front), while
another instance's turn is appended and acknowledged between the write's first run and its
retry. Nothing acknowledged may be lost, nothing stored twice, nothing undone by a retry, and a
stale lease holder stores nothing. Then several instances write at once under repeated stalls,
with a ledger of what was acknowledged checked at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from chatstate import (
    LeaseLostError,
    Message,
    OutcomeUnknownError,
    RedisStateStore,
    RetryPolicy,
    SessionExistsError,
    StateSaveError,
    fork_session,
    import_sessions,
)
from chatstate.stores import SessionSnapshot
from chatstate.stores.redis import _scripts as lua
from chatstate.testing.redis_server import RedisServer
from chatstate.transfer import EXPORT_FORMAT

from .redis_wire import WireConnection, Write, wired_client

pytestmark = pytest.mark.redis

TIMEOUT = 0.2
"""The faulted instance's socket timeout: a reply later than this is lost to it."""

STALL = 0.5
"""How long a ``DEBUG SLEEP`` holds the server: well past ``TIMEOUT``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pinned(RetryPolicy):
    """A retry policy without jitter: every retry waits ``pause`` seconds."""

    pause: float = 0.0

    def delay(self, failures: int) -> float:
        return self.pause


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A server of this module's own, to stall (DEBUG SLEEP), kill and restart; every write is on
    disk (AOF, fsync on every write) before it is acknowledged."""
    with RedisServer(
        "--enable-debug-command", "yes", "--appendonly", "yes", "--appendfsync", "always"
    ) as server:
        yield server


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[RedisStateStore], RedisStateStore]]:
    """``closing(store)``: the store, closed when the test ends, however it ends."""
    stores: list[RedisStateStore] = []

    def keep(store: RedisStateStore) -> RedisStateStore:
        stores.append(store)
        return store

    yield keep
    for store in stores:
        await store.aclose()


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _turn(tag: str) -> list[Message]:
    return [_user(f"{tag}?"), Message(role="assistant", content=f"{tag}.")]


def _texts(messages: list[Message]) -> list[str]:
    return [message.text for message in messages]


# -- faults, injected on the wire --------------------------------------------------------------


class Stall:
    """``DEBUG SLEEP`` sent on a raw socket of its own: the whole server stalls; commands sent
    meanwhile queue, and run when it wakes (after their client may have given up)."""

    def __init__(self, server: RedisServer) -> None:
        self._port = server.port
        assert server.process is not None
        self._wchan = Path(f"/proc/{server.process.pid}/wchan")
        self._sockets: list[socket.socket] = []

    def start(self, seconds: float = STALL) -> None:
        sock = socket.create_connection(("127.0.0.1", self._port), timeout=5)
        sock.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())
        self._sockets.append(sock)
        # Blocking, on purpose (the wire hook calls this just before the faulted command goes
        # out): wait until the server is asleep, seen by the kernel (its main thread in
        # nanosleep rather than in epoll_wait). A blind pause lost that race on a loaded machine,
        # and the command ran before the stall.
        deadline = time.monotonic() + 5
        while "nanosleep" not in self._wchan.read_text():
            assert time.monotonic() < deadline, "the server never went to sleep"
            time.sleep(0.001)  # waiting for a real server

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.settimeout(5)
                sock.recv(64)  # +OK: the stall is over
                sock.close()
        self._sockets.clear()


@dataclass
class Arm:
    """Faults the first write of a script that goes out on an instance's wire (``fault`` of
    :class:`~tests.redis_wire.WireConnection`), and records when each write of it is sent."""

    connection: type[WireConnection]
    sha: bytes
    stall: Stall
    action: str = "none"  # "stall": the server sleeps first; "lose": its reply is lost
    seconds: float = STALL  # how long a stall lasts
    sent_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connection.fault = self

    def __call__(self, write: Write) -> BaseException | None:
        if not any(_runs(command, self.sha) for command in write.commands):
            return None
        self.sent_at.append(time.monotonic())
        if len(self.sent_at) == 1:
            if self.action == "stall":
                self.stall.start(self.seconds)
            elif self.action == "lose":
                self.connection.lose_replies += 1
        return None


def _runs(command: list[bytes], sha: bytes) -> bool:
    """Whether ``command`` runs the script of ``sha`` (by EVALSHA, or by EVAL after a restart
    that emptied the server's script cache)."""
    if command[0].upper() == b"EVAL":
        return hashlib.sha1(command[1], usedforsecurity=False).hexdigest().encode() == sha
    return command[0].upper() == b"EVALSHA" and command[1] == sha


# -- the writes ---------------------------------------------------------------------------------


@dataclass
class Op:
    """One write operation, on the target session "s" (which another instance then appends to)."""

    script: lua.Script
    prepare: Callable[[RedisStateStore], Awaitable[None]]
    call: Callable[[RedisStateStore, str | None], Awaitable[Any]]
    result: Callable[[Any], bool]
    after: list[str]  # the texts of "s" right after the write
    caller_retry: Callable[[RedisStateStore, StateSaveError, str | None], Awaitable[Any]]
    takes_write_id: bool = True
    caller_retries: bool = True  # False: a fold raises StoreError, and takes no write id


def _line(session_id: str, messages: list[Message]) -> str:
    return json.dumps(
        {
            "format": EXPORT_FORMAT,
            "session_id": session_id,
            "messages": [json.loads(m.model_dump_json(exclude_defaults=True)) for m in messages],
            "summary": None,
            "expires_at": None,
        }
    )


async def _before(store: RedisStateStore) -> None:
    await store.save("s", _turn("before"))


async def _source(store: RedisStateStore) -> None:
    await store.save("src", _turn("source"))


async def _nothing(store: RedisStateStore) -> None:
    pass


async def _retry_append(store: RedisStateStore, err: StateSaveError, wid: str | None) -> Any:
    return await store.append("s", err.messages, write_id=wid or err.write_id)


async def _retry_save(store: RedisStateStore, err: StateSaveError, wid: str | None) -> Any:
    return await store.save("s", err.messages, write_id=wid or err.write_id)


async def _retry_delete(store: RedisStateStore, err: StateSaveError, wid: str | None) -> Any:
    return await store.delete("s", write_id=wid or err.write_id)


async def _retry_restore(store: RedisStateStore, err: StateSaveError, wid: str | None) -> Any:
    # The error carries the messages to restore; the snapshot of a fork or an import is the
    # caller's (read again, or kept).
    snapshot = SessionSnapshot(list(err.messages))
    return await store.restore("s", snapshot, overwrite=True, write_id=wid or err.write_id)


async def _retry_fork(store: RedisStateStore, err: StateSaveError, wid: str | None) -> Any:
    # The fork run again with the error's write id: its own copy is there, so it reports it.
    copied = await fork_session(store, "src", "s", write_id=err.write_id)
    assert copied.messages == _turn("source")


async def _retry_restore_of(store: RedisStateStore, err: StateSaveError) -> None:
    # The session that failed, restored again with the error's messages and write id.
    assert err.session_id == "s"
    snapshot = SessionSnapshot(list(err.messages))
    assert await store.restore("s", snapshot, write_id=err.write_id) is True


async def _retry_import(store: RedisStateStore, err: StateSaveError, wid: str | None) -> Any:
    # The session that failed, retried with the error's write id; then the rest of the import
    # (import_sessions takes no write id: run again, it would find its own sessions there).
    await _retry_restore_of(store, err)
    report = await import_sessions(store, _lines(), on_conflict="skip")
    assert report.imported == ["t"] and report.skipped == ["s"]


async def _fork(store: RedisStateStore, write_id: str | None) -> Any:
    return await fork_session(store, "src", "s", write_id=write_id)


async def _fold_the_first_turn(history: list[Message], summary: Message | None) -> Any:
    return 2, Message(role="system", content="folded by A")


def _lines() -> list[str]:
    return [_line("s", _turn("imported s")), _line("t", _turn("imported t"))]


async def _import(store: RedisStateStore, write_id: str | None) -> Any:
    return await import_sessions(store, _lines())


OPS: dict[str, Op] = {
    "append": Op(
        lua.APPEND,
        _before,
        lambda store, wid: store.append("s", _turn("A"), write_id=wid),
        lambda length: length == 6,  # a retry reports the length now: B's turn came after
        _texts(_turn("before") + _turn("A")),
        _retry_append,
    ),
    "save": Op(
        lua.REPLACE,
        _before,
        lambda store, wid: store.save("s", _turn("saved by A"), write_id=wid),
        lambda result: result is None,
        _texts(_turn("saved by A")),
        _retry_save,
    ),
    "delete": Op(
        lua.DELETE,
        _before,
        lambda store, wid: store.delete("s", write_id=wid),
        lambda existed: existed is True,
        [],
        _retry_delete,
    ),
    "restore": Op(
        lua.REPLACE,
        _before,
        lambda store, wid: store.restore(
            "s", SessionSnapshot(_turn("restored by A")), overwrite=True, write_id=wid
        ),
        lambda restored: restored is True,
        _texts(_turn("restored by A")),
        _retry_restore,
    ),
    "fork_session": Op(
        lua.REPLACE,
        _source,
        _fork,
        lambda copied: isinstance(copied, SessionSnapshot) and copied.messages == _turn("source"),
        _texts(_turn("source")),
        _retry_fork,
    ),
    "import_sessions": Op(
        lua.REPLACE,
        _nothing,
        _import,
        lambda report: report.imported == ["s", "t"] and not report.skipped,
        _texts(_turn("imported s")),
        _retry_import,
        takes_write_id=False,
    ),
    "compact": Op(
        lua.COMPACT,
        lambda store: store.save("s", _turn("0") + _turn("1") + _turn("2")),
        lambda store, wid: store.compact("s", _fold_the_first_turn),
        lambda folded: folded is True,
        _texts(_turn("1") + _turn("2")),
        _retry_append,  # never called
        takes_write_id=False,
        caller_retries=False,
    ),
}


# -- one write, one fault, one retry ------------------------------------------------------------

_ids = itertools.count()


@contextlib.asynccontextmanager
async def _instances(
    server: RedisServer, prefix: str, retry: RetryPolicy | None
) -> AsyncIterator[tuple[RedisStateStore, type[WireConnection], RedisStateStore]]:
    """Instance A (faulted: short timeout, wired) and instance B (another app instance)."""
    client, connection = wired_client(server.url, socket_timeout=TIMEOUT)
    a = RedisStateStore(client, prefix=prefix, retry=retry, owns_client=True)
    b = RedisStateStore.from_url(server.url, prefix=prefix, socket_timeout=10)
    try:
        yield a, connection, b
    finally:
        await a.aclose()
        await b.aclose()


async def _warm_up(server: RedisServer) -> None:
    """Every write's script known to the server (a first call that finds it unknown goes out
    twice, EVALSHA then EVAL, which is not the fault injected): through an instance of its own
    with a long timeout, so a loaded machine cannot fail the warm-up itself."""
    async with RedisStateStore.from_url(server.url, prefix="warm-up", socket_timeout=30) as store:
        await store.append("warm-up", _turn("warm-up"))
        await store.save("warm-up", _turn("warm-up"))
        await store.restore("warm-up", SessionSnapshot(_turn("warm-up")), overwrite=True)
        await store.append("warm-up", _turn("warm-up"))
        assert await store.compact("warm-up", _fold_the_first_turn)
        await store.delete("warm-up")
        await store.load_versioned("warm-up")
        await store.version("warm-up")


async def _landed(store: RedisStateStore, version: int, deadline: float = 10.0) -> None:
    """Wait until the session "s" is at another version than ``version``: A's write ran."""
    give_up = time.monotonic() + deadline
    while await store.version("s") == version:
        assert time.monotonic() < give_up, "the faulted write never ran"
        await asyncio.sleep(0.005)  # polling a real server that is waking up


MODES = ["store-retry", "caller-retry"]
FAULTS = ["stall", "lost-reply", "cancelled", "killed"]


def _cases() -> list[Any]:
    cases = []
    for op, spec in OPS.items():
        for fault in FAULTS:
            for mode in MODES:
                if fault == "cancelled" and (mode == "store-retry" or not spec.takes_write_id):
                    continue  # a cancelled caller retries itself, with the id it gave
                if mode == "caller-retry" and not spec.caller_retries:
                    continue
                cases.append(pytest.param(op, fault, mode, id=f"{op}-{fault}-{mode}"))
    return cases


@pytest.mark.parametrize(("op", "fault", "mode"), _cases())
async def test_a_faulted_write_retried_is_applied_once_and_undoes_nothing(
    server: RedisServer, key_prefix: str, op: str, fault: str, mode: str
) -> None:
    spec = OPS[op]
    stall = Stall(server)
    # The store's retry comes well after A's first run and B's acknowledged append.
    retry = Pinned(attempts=3, pause=1.2 if fault == "killed" else 0.8)
    async with _instances(server, key_prefix, retry if mode == "store-retry" else None) as (
        a,
        connection,
        b,
    ):
        await _warm_up(server)
        await spec.prepare(b)
        version = await b.version("s")
        arm = Arm(connection, spec.script.sha.encode(), stall)
        arm.action = {"stall": "stall", "cancelled": "stall"}.get(fault, "lose")
        write_id = f"w{next(_ids)}-{key_prefix}" if fault == "cancelled" else None
        outcome: list[Any] = []

        async def write() -> None:
            try:
                outcome.append(await spec.call(a, write_id))
            except StateSaveError as exc:
                outcome.append(exc)

        task = asyncio.create_task(write())
        try:
            if fault == "cancelled":
                while not arm.sent_at:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.05)  # sent, and waiting on the stalled server
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await _landed(b, version)  # A's first run
            if fault == "killed":
                server.kill()  # after it ran and was written to the AOF, before any retry
                server.start()
            await b.append("s", _turn("B"))  # another instance's turn, acknowledged
            acknowledged = time.monotonic()
            if fault != "cancelled":
                await task
        finally:
            if not task.done():
                task.cancel()
            stall.close()
        if fault == "cancelled":
            for _ in range(5):  # the caller's retry, with the id it gave, until acknowledged
                try:
                    await spec.call(a, write_id)
                    break
                except OutcomeUnknownError:
                    pass
        elif mode == "store-retry":
            (result,) = outcome
            assert not isinstance(result, BaseException), result
            assert spec.result(result)
            assert len(arm.sent_at) >= 2 and arm.sent_at[1] > acknowledged  # retried after B
        else:
            (error,) = outcome
            assert isinstance(error, OutcomeUnknownError), error
            assert error.write_id is not None
            for _ in range(5):  # the documented retry, until acknowledged (a loaded machine
                try:  # can make the retry's own reply late too: it is retried the same way)
                    await spec.caller_retry(a, error, write_id)
                    break
                except OutcomeUnknownError:
                    pass
            assert len(arm.sent_at) >= 2
        # A's write once, B's turn after it: nothing doubled, nothing undone.
        assert _texts(await b.load("s")) == [*spec.after, *_texts(_turn("B"))]
        if op == "import_sessions":
            assert _texts(await b.load("t")) == _texts(_turn("imported t"))
        if op == "compact":
            _, summary = await b.load_with_summary("s")
            assert summary is not None and summary.text == "folded by A"


# -- a write sent, then no server: its outcome is unknown, never "not written" -------------------


async def test_a_write_sent_before_the_server_died_is_not_reported_as_never_written(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    """The append runs (and is on disk), its reply is lost, the server dies, and the store's
    retries find no server: what the caller hears must be "outcome unknown", since the first
    try was sent. (It was "StateSaveError: nothing was written", from the last try alone, while
    the restarted server had the turn.) The documented retry then stores it once."""
    client, connection = wired_client(server.url, socket_timeout=TIMEOUT)
    a = closing(
        RedisStateStore(
            client, prefix=key_prefix, retry=Pinned(attempts=3, pause=0.3), owns_client=True
        )
    )
    await _warm_up(server)
    await a.save("s", _turn("before"))
    arm = Arm(connection, lua.APPEND.sha.encode(), Stall(server), action="lose")
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, server.kill)  # after the append ran, before the store's first retry
    try:
        with pytest.raises(StateSaveError) as caught:
            await a.append("s", _turn("A"))
    finally:
        if server.process is None:
            server.start()  # from its AOF
    assert len(arm.sent_at) == 1  # the retries found no server: never sent
    assert isinstance(caught.value, OutcomeUnknownError), caught.value
    assert "nothing was written" not in str(caught.value)
    assert _texts(await a.load("s")) == _texts(_turn("before") + _turn("A"))  # it was written
    await a.append("s", caught.value.messages, write_id=caught.value.write_id)
    assert _texts(await a.load("s")) == _texts(_turn("before") + _turn("A"))  # once


# -- fork and import: their own write is success, stall after stall ----------------------------


async def test_a_fork_whose_reply_is_late_succeeds_20_times_of_20(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    """The default retry policy (3 tries, jittered backoff), every fork's restore stalled past
    the timeout: each fork reports its copy (before: SessionExistsError, 20 of 20)."""
    client, connection = wired_client(server.url, socket_timeout=0.1)
    a = closing(RedisStateStore(client, prefix=key_prefix, owns_client=True))  # DEFAULT_RETRY
    await _warm_up(server)
    await a.save("src", _turn("source"))
    stall = Stall(server)
    forked = 0
    for index in range(20):
        arm = Arm(connection, lua.REPLACE.sha.encode(), stall, action="stall", seconds=0.15)
        try:
            copied = await fork_session(a, "src", f"fork-{index}")
        finally:
            stall.close()
        assert copied.messages == _turn("source")
        assert len(arm.sent_at) >= 2  # it was retried
        forked += 1
    assert forked == 20
    for index in range(20):
        assert await a.load(f"fork-{index}") == _turn("source")


async def test_an_import_whose_replies_are_late_imports_every_session(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    client, connection = wired_client(server.url, socket_timeout=0.1)
    a = closing(RedisStateStore(client, prefix=key_prefix, owns_client=True))  # DEFAULT_RETRY
    await _warm_up(server)
    stall = Stall(server)
    sent: list[bytes] = []  # the list key of every restore sent

    def fault(write: Write) -> BaseException | None:
        # Every restore's first try stalls past the timeout.
        for command in write.commands:
            if _runs(command, lua.REPLACE.sha.encode()):
                if command[3] not in sent:
                    stall.start(0.15)
                sent.append(command[3])
        return None

    connection.fault = fault
    lines = [_line(f"i{index}", _turn(f"imported {index}")) for index in range(5)]
    try:
        report = await import_sessions(a, lines, on_conflict="skip")
    finally:
        stall.close()
    assert report.imported == [f"i{index}" for index in range(5)] and report.skipped == []
    assert len(sent) >= 10 and len(set(sent)) == 5  # each was retried
    for index in range(5):
        assert await a.load(f"i{index}") == _turn(f"imported {index}")


async def test_an_import_run_again_with_its_write_id_finishes_what_it_began(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    """No store retries; the third session's restore stalls past the timeout (it runs all the
    same): the import raises OutcomeUnknownError with two sessions written and the third
    written late. Run again with the same write_id and on_conflict="raise", the import counts
    those three as its own (not conflicts) and writes the other two, each once."""
    client, connection = wired_client(server.url, socket_timeout=0.1)
    a = closing(RedisStateStore(client, prefix=key_prefix, owns_client=True, retry=None))
    await _warm_up(server)
    stall = Stall(server)
    restores = 0

    def fault(write: Write) -> BaseException | None:
        nonlocal restores
        for command in write.commands:
            if _runs(command, lua.REPLACE.sha.encode()):
                restores += 1
                if restores == 3:
                    stall.start(0.15)
        return None

    connection.fault = fault
    lines = [_line(f"i{index}", _turn(f"imported {index}")) for index in range(5)]
    try:
        with pytest.raises(OutcomeUnknownError):
            await import_sessions(a, lines, write_id="nightly-import-7")
    finally:
        stall.close()
    await asyncio.sleep(0.2)  # the stalled restore has run by now
    assert [await a.exists(f"i{index}") for index in range(5)] == [True] * 3 + [False] * 2
    connection.fault = None
    report = await import_sessions(a, lines, write_id="nightly-import-7")
    assert report.imported == [f"i{index}" for index in range(5)]
    for index in range(5):
        assert await a.load(f"i{index}") == _turn(f"imported {index}")
    with pytest.raises(SessionExistsError):  # another import's lines: conflicts, as always
        await import_sessions(a, lines, write_id="another-import")


# -- a stale lease holder, stalled for real, stores nothing -------------------------------------


async def test_a_holder_stalled_past_its_lease_stores_nothing(
    server: RedisServer, key_prefix: str
) -> None:
    """A holds the lease (ttl 0.3 s); its append meets a stalled server and times out; the lease
    runs out during the stall; B takes it and appends. A's first run and its retries are
    refused by the fence: only B's turn is stored."""
    retry = Pinned(attempts=3, pause=0.8)
    async with _instances(server, key_prefix, retry) as (a, connection, b):
        await _warm_up(server)
        await b.save("s", _turn("before"))
        version = await b.version("s")
        stall = Stall(server)
        arm = Arm(connection, lua.APPEND.sha.encode(), stall, action="stall")
        failures: list[BaseException] = []

        async def stale_holder() -> None:
            try:
                async with a.lease("s", ttl=0.3, timeout=1):
                    await a.append("s", _turn("stale A"))
            except LeaseLostError as exc:
                failures.append(exc)

        task = asyncio.create_task(stale_holder())
        try:
            while not arm.sent_at:
                await asyncio.sleep(0.005)
            stall.close()  # the stall is over: the lease ran out meanwhile
            async with b.lease("s", ttl=5, timeout=5):
                await b.append("s", _turn("B"))
            await task
        finally:
            if not task.done():
                task.cancel()
        assert len(failures) == 1
        assert await b.version("s") == version + 1  # B's append alone: A stored nothing
        assert _texts(await b.load("s")) == _texts(_turn("before") + _turn("B"))


# -- several instances at once, under repeated stalls: a ledger of what was acknowledged ---------


async def test_instances_writing_at_once_under_repeated_stalls_lose_and_double_nothing(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    """Two instances save (timeout 0.1 s: the stalls make their replies late, and they retry,
    themselves and then as callers, until acknowledged); two others append (replies always
    read). Every write bumps its session's version by one, so the versions the appends report
    are a ledger: at the end each session must be the content of one save followed by exactly
    the appends numbered after it, every write applied once (the versions add up), no turn
    twice, none lost."""
    url = server.url
    savers = [
        closing(
            RedisStateStore.from_url(
                url, prefix=key_prefix, socket_timeout=0.1, retry=Pinned(attempts=2, pause=0.02)
            )
        )
        for _ in range(2)
    ]
    appenders = [
        closing(RedisStateStore.from_url(url, prefix=key_prefix, socket_timeout=10)) for _ in "ab"
    ]
    sessions = ["c0", "c1", "c2"]
    start: dict[str, int] = {}
    for sid in sessions:
        await appenders[0].append(sid, [_user(f"{sid} initial")])
        start[sid] = await appenders[0].version(sid)
    appends: dict[str, list[tuple[int, str]]] = {sid: [] for sid in sessions}
    saves: dict[str, list[str]] = {sid: [] for sid in sessions}
    outcomes_unknown = 0
    stalls_done = asyncio.Event()

    async def stall_repeatedly() -> None:
        async with Redis.from_url(url) as raw:
            for _ in range(6):
                await raw.execute_command("DEBUG", "SLEEP", 0.3)  # returns when it is over
                await asyncio.sleep(0.15)
        stalls_done.set()

    async def save_until_stalls_end(store: RedisStateStore, name: str) -> None:
        nonlocal outcomes_unknown
        for index in itertools.count():
            if stalls_done.is_set():
                return
            sid = sessions[index % len(sessions)]
            text = f"save {name}-{index}"
            write_id: str | None = None
            for _ in range(100):
                try:
                    await store.save(sid, [_user(text)], write_id=write_id)
                    break
                except StateSaveError as exc:  # the documented retry, until acknowledged
                    outcomes_unknown += isinstance(exc, OutcomeUnknownError)
                    write_id = exc.write_id
                    await asyncio.sleep(0.02)
            else:
                pytest.fail(f"{text} was never acknowledged")
            saves[sid].append(text)

    async def append_until_stalls_end(store: RedisStateStore, name: str) -> None:
        for index in itertools.count():
            if stalls_done.is_set():
                return
            sid = sessions[index % len(sessions)]
            text = f"append {name}-{index}"
            _, version = await store.append_versioned(sid, [_user(text)])
            appends[sid].append((version, text))
            await asyncio.sleep(0.002)

    await asyncio.gather(
        stall_repeatedly(),
        *(save_until_stalls_end(store, f"s{n}") for n, store in enumerate(savers)),
        *(append_until_stalls_end(store, f"a{n}") for n, store in enumerate(appenders)),
    )
    assert outcomes_unknown > 0, "the stalls should have made some saves' outcome unknown"
    for sid in sessions:
        history = _texts(await appenders[0].load(sid))
        final = await appenders[0].version(sid)
        assert len(history) == len(set(history)), history  # no turn twice
        # Every acknowledged write applied exactly once: one version each, no more.
        assert final - start[sid] == len(appends[sid]) + len(saves[sid]), sid
        head, tail = history[0], history[1:]
        assert head in (f"{sid} initial", *saves[sid])
        assert all(text.startswith("append ") for text in tail)
        # The appends after the save that stands are exactly those numbered after it: none lost,
        # none undone by a save's late retry.
        after = sorted(entry for entry in appends[sid] if entry[0] > final - len(tail))
        assert [text for _, text in after] == tail, sid
        assert [version for version, _ in after] == list(range(final - len(tail) + 1, final + 1))
        if head == f"{sid} initial":
            assert final - len(tail) == start[sid]
        else:
            assert all(version != final - len(tail) for version, _ in appends[sid])


async def test_a_turn_cancelled_while_taking_the_lease_gives_it_back(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    """Issue 16, finding 8, on a real server: the acquire is sent, the server stalls, the caller
    is cancelled, and the server then grants the lease to a caller that is gone. What it took is
    given back: the next instance takes the lease at once, not after its 30 s."""
    a = closing(RedisStateStore.from_url(server.url, prefix=key_prefix))
    b = closing(RedisStateStore.from_url(server.url, prefix=key_prefix))
    async with a.lease("warm-up", ttl=5, timeout=1), b.lease("warm-up-b", ttl=5, timeout=1):
        pass  # the lease scripts known to the server
    stall = Stall(server)

    async def take() -> None:
        async with a.lease("s", ttl=30, timeout=10):
            pytest.fail("the lease should not have been taken")

    stall.start(0.4)
    task = asyncio.create_task(take())
    await asyncio.sleep(0.1)  # the acquire is sent, and waits on the stalled server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # it gave back what the late acquire granted
    stall.close()
    assert await b.client.exists(b.key("s", "lease")) == 0
    async with b.lease("s", ttl=30, timeout=0.5):
        pass  # free at once


async def test_concurrent_callers_cancelled_mid_write_store_each_turn_once_on_retry(
    server: RedisServer,
    key_prefix: str,
    closing: Callable[[RedisStateStore], RedisStateStore],
) -> None:
    """Forty appends at once on a stalled server, each with its write id given up front (some on
    the fast path, most in shared pipelined writes), are cancelled at three moments: before they
    start, queued, and sent. Those sent run when the server wakes; every caller then retries
    with its id: each turn is stored exactly once."""
    a = closing(RedisStateStore.from_url(server.url, prefix=key_prefix, socket_timeout=5))
    await _warm_up(server)
    stall = Stall(server)
    stall.start(0.4)
    tasks = [
        asyncio.create_task(a.append(f"c{n % 4}", _turn(f"t{n}"), write_id=f"id-{n}"))
        for n in range(40)
    ]
    for task in tasks[::3]:
        task.cancel()  # before it ever ran
    await asyncio.sleep(0)
    for task in tasks[1::3]:
        task.cancel()  # queued, perhaps not yet sent
    await asyncio.sleep(0.1)
    for task in tasks[2::3]:
        task.cancel()  # sent, waiting on the stalled server
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stall.close()
    for n in range(40):  # every caller's retry, with its id
        await a.append(f"c{n % 4}", _turn(f"t{n}"), write_id=f"id-{n}")
    for session in range(4):
        history = _texts(await a.load(f"c{session}"))
        expected = {text for n in range(session, 40, 4) for text in _texts(_turn(f"t{n}"))}
        assert sorted(history) == sorted(expected)  # each turn once, none lost
