"""What every operation of a core store ends with: counted, timed, told to the hooks, and, when it
failed, its backend's error raised as chatstate's."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from chatstate.errors import (
    ChatStateError,
    LeaseLostError,
    OutcomeUnknownError,
    StateSaveError,
    StoreError,
    WrongTypeError,
)
from chatstate.messages import Message
from chatstate.metrics import Recorder, StateMetrics
from chatstate.stores._backend import Fenced
from chatstate.stores._events import Hook, Operation, StoreEvent, emit

__all__ = ["Reporting", "clock"]

logger = logging.getLogger("chatstate")

clock = time.perf_counter
"""What operations are timed with."""

_READS: frozenset[Operation] = frozenset({"load", "snapshot"})
_WHOLE_WRITES: frozenset[Operation] = frozenset({"save", "restore"})


class Reporting:
    """The reporting half of a core store (:class:`~chatstate.stores.BackendStore`)."""

    backend: Any
    _timing_mask = 0
    """Loads and appends whose count has none of these bits set are timed for the latency
    percentiles: all of them (0), or one in sixteen (15) where a call costs about a microsecond
    and timing it would cost a tenth of that."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self._hooks: list[Hook] = list(hooks)
        self._recorder = Recorder()
        self.corrupt_entries = 0
        """Entries skipped because they could not be decoded (or, encrypted, opened)."""

    def add_hook(self, hook: Hook) -> None:
        """Call ``hook(event)`` when each operation ends (a
        :class:`~chatstate.stores.StoreEvent`): synchronously, in the task that made the call. A
        hook must be quick and must not raise (one that raises is logged and left in place)."""
        self._hooks.append(hook)

    def remove_hook(self, hook: Hook) -> None:
        """Stop calling ``hook``; ValueError if it was not added."""
        self._hooks.remove(hook)

    async def metrics(self) -> StateMetrics:
        """This store's :class:`~chatstate.metrics.StateMetrics`: calls, errors, trims and
        latencies of this instance (every operation, whatever its method), and the backend's
        census of what it holds (see the backend's docs for which figures are estimates)."""
        try:
            census = await self.backend.census()
        except Exception as exc:
            if self.backend.error_kind(exc) is None:
                raise
            raise StoreError(f"reading the metrics failed: {type(exc).__name__}: {exc}") from exc
        return self._recorder.metrics(
            active_sessions=census.sessions,
            messages=census.messages,
            storage_used=census.storage_bytes,
            expirations=census.expirations,
            evictions=census.evictions,
        )

    def _skipped(self, skipped: int, session_id: str) -> None:
        self.corrupt_entries += skipped
        logger.warning("skipped %d corrupt entries of session %r", skipped, session_id)

    def _loaded(self, session_id: str, started: float, messages: int, skipped: int = 0) -> None:
        """A load done, counted: timed one in ``_timing_mask + 1`` (every one with hooks)."""
        recorder = self._recorder
        timed = not recorder.loads & self._timing_mask or self._hooks
        recorder.loads += 1
        if timed:
            ended = clock()
            recorder.load_window.append(ended - started)
            if self._hooks:
                event = StoreEvent("load", session_id, started, ended - started, messages)
                event.skipped = skipped
                emit(self._hooks, event)

    def _appended(self, session_id: str, started: float, messages: int, trimmed: bool) -> None:
        recorder = self._recorder
        if not recorder.appends & self._timing_mask:
            recorder.save_window.append(clock() - started)
        recorder.appends += 1
        if trimmed:
            recorder.trims += 1
        if self._hooks:
            event = StoreEvent("append", session_id, started, clock() - started, messages)
            event.trimmed = trimmed
            emit(self._hooks, event)

    def _report(
        self, operation: Operation, session_id: str, started: float, messages: int = 0
    ) -> None:
        """Any other operation done: counted where StateMetrics has a counter for it."""
        ended = clock()
        recorder = self._recorder
        if operation in _READS:
            recorder.loads += 1
            recorder.load_window.append(ended - started)
        elif operation == "delete":
            recorder.deletes += 1
        elif operation in _WHOLE_WRITES:
            recorder.saves += 1
            recorder.save_window.append(ended - started)
        if self._hooks:
            emit(self._hooks, StoreEvent(operation, session_id, started, ended - started, messages))

    def _fail(
        self,
        exc: Exception,
        operation: Operation,
        session_id: str,
        started: float,
        kind: type[StoreError],
        doing: str,
        messages: Sequence[Message] = (),
        write_id: str | None = None,
    ) -> NoReturn:
        """Raise ``exc`` as chatstate's error of ``kind`` (reported as a failed operation): for a
        write (``kind`` StateSaveError), OutcomeUnknownError when it may have been applied, and
        LeaseLostError when its lease's fence refused it."""
        self._recorder.errors += 1
        if self._hooks:
            event = StoreEvent(operation, session_id, started, clock() - started)
            event.error = exc
            emit(self._hooks, event)
        if isinstance(exc, ChatStateError):
            raise exc
        if isinstance(exc, Fenced):
            raise LeaseLostError(
                f"{doing} session {session_id!r} was refused: the lease this turn held has been "
                "lost (it ran out, and another holder may have taken it); nothing was written",
                session_id=session_id,
            ) from exc
        error_kind = self.backend.error_kind(exc)
        if error_kind is None:
            raise exc
        if error_kind == "wrong_type":
            raise WrongTypeError(
                f"the storage of session {session_id!r} holds data that is not a chatstate "
                f"history; it was left unchanged",
                session_id=session_id,
            ) from exc
        text = f"{doing} session {session_id!r} failed: {type(exc).__name__}: {exc}"
        if kind is StateSaveError:
            if error_kind == "timeout":
                raise OutcomeUnknownError(
                    f"{text} (the outcome is unknown: it may have been applied; retrying with its "
                    "write_id applies it at most once)",
                    session_id=session_id,
                    messages=messages,
                    write_id=write_id,
                ) from exc
            raise StateSaveError(
                f"{text} (nothing was written)",
                session_id=session_id,
                messages=messages,
                write_id=write_id,
            ) from exc
        raise kind(text, session_id=session_id) from exc
