"""The thread that owns a SQLite store's connection: every call is one job on it, a whole
transaction, so no file I/O blocks the event loop and no transaction spans two hops.

Callers queue their jobs; the thread runs them in order and, once nothing more is queued (or
after :data:`_BATCH` jobs), wakes their callers in one call into their event loop
(``anyio.from_thread.run_sync`` with the loop's token). Measured against a call through
``anyio.to_thread.run_sync`` with a ``CapacityLimiter(1)`` (which hands the next job over only
after the event loop has run) and a thread pool executor, it is as fast as the executor under
concurrency and runs on any event loop anyio supports (see the changelog for the figures).

A caller cancelled before its job started withdraws it: it never runs. A caller cancelled while
its job runs waits for the job to end (shielded) and then takes the cancellation: a transaction
is never left open, and nothing of it is half-written.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from chatstate.errors import StoreError

__all__ = ["StoreThread"]

T = TypeVar("T")
P = ParamSpec("P")

_BATCH = 64
"""Jobs run at most before their callers are woken (their results wait until then)."""

_PENDING, _RUNNING, _WITHDRAWN = 0, 1, 2
_states = threading.Lock()  # guards every call's pending -> running / withdrawn step


class _Call(Generic[T]):
    __slots__ = ("done", "error", "job", "state", "token", "value")

    def __init__(self, job: Callable[[sqlite3.Connection], T] | None) -> None:
        self.job = job  # None: close the connection and end the thread
        self.token = anyio.lowlevel.current_token()
        self.done = anyio.Event()
        self.state = _PENDING
        self.value: T | None = None
        self.error: BaseException | None = None

    def start(self) -> bool:
        """On the thread: whether to run it (False: its caller withdrew it)."""
        with _states:
            if self.state == _WITHDRAWN:
                return False
            self.state = _RUNNING
            return True

    def withdraw(self) -> bool:
        """On the event loop: take it back if it has not started; whether it was."""
        with _states:
            if self.state != _PENDING:
                return False
            self.state = _WITHDRAWN
            return True

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # set, since no error was


class StoreThread:
    """A thread of its own, started on the first call, ended by :meth:`aclose` (or when this
    object is garbage collected); the connection is opened on it by ``connect`` at the first
    job (again at the next job if opening failed) and closed when it ends."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], *, name: str, closed: str
    ) -> None:
        self._connect = connect
        self._name = name
        self._closed_text = closed
        self._calls: SimpleQueue[_Call[Any] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def run(
        self,
        job: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``job(connection, *args, **kwargs)`` on the thread; its result or its exception."""
        if self._closed:
            raise StoreError(self._closed_text)
        if self._thread is None:
            self._start()
        call: _Call[T] = _Call(lambda connection: job(connection, *args, **kwargs))
        self._calls.put(call)
        try:
            await call.done.wait()
        except BaseException:  # cancelled (or the loop is going away)
            if not call.withdraw():
                with anyio.CancelScope(shield=True):
                    await call.done.wait()  # it runs: let it end before the caller goes
            raise
        return call.outcome()

    async def aclose(self) -> None:
        """Run the jobs already queued, close the connection and end the thread. Idempotent;
        calls after it raise StoreError."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        call: _Call[None] = _Call(None)
        self._calls.put(call)
        with anyio.CancelScope(shield=True):
            await call.done.wait()

    def _start(self) -> None:
        calls = self._calls
        self._thread = threading.Thread(
            target=_serve, args=(calls, self._connect), name=self._name, daemon=True
        )
        self._thread.start()
        # The thread holds only the queue and ``connect``: an abandoned store is collected,
        # and this ends its thread.
        weakref.finalize(self, calls.put, None)


def _serve(
    calls: SimpleQueue[_Call[Any] | None], connect: Callable[[], sqlite3.Connection]
) -> None:
    connection: sqlite3.Connection | None = None
    try:
        while True:
            finished: list[_Call[Any]] = []
            call = calls.get()
            stop = False
            while True:
                if call is None or call.job is None:  # collected, or closed
                    stop = True
                    if call is not None:
                        if connection is not None:
                            connection.close()
                            connection = None
                        finished.append(call)
                    break
                if call.start():
                    try:
                        if connection is None:
                            connection = connect()
                        call.value = call.job(connection)
                    except BaseException as exc:
                        call.error = exc
                    finished.append(call)
                if len(finished) >= _BATCH or calls.empty():
                    break
                call = calls.get()
            _wake(finished)
            if stop:
                return
    finally:
        if connection is not None:
            connection.close()


def _wake(finished: list[_Call[Any]]) -> None:
    """Set the calls' events, in one call into each event loop they came from."""
    while finished:
        native = finished[0].token.native_token
        group = [call for call in finished if call.token.native_token is native]
        finished = [call for call in finished if call.token.native_token is not native]
        try:
            anyio.from_thread.run_sync(_set_all, group, token=group[0].token)
        except Exception:  # that loop has ended: nobody waits there any more
            pass


def _set_all(calls: list[_Call[Any]]) -> None:
    for call in calls:
        call.done.set()
