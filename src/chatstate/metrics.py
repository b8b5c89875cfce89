"""What a store reports about itself: :class:`StateMetrics`, from ``await store.metrics()``.

Every built-in store answers ``metrics()``; :class:`InstrumentedStore` gives the same for any
other store by wrapping it. Latencies are percentiles over a sliding window of the most recent
calls (:data:`WINDOW`); counters count since the store was made, in this process.
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self, cast

from chatstate.errors import InvalidInputError

if TYPE_CHECKING:
    from chatstate.messages import Message
    from chatstate.stores.base import TTL

__all__ = ["WINDOW", "InstrumentedStore", "LatencySummary", "StateMetrics"]

WINDOW = 1024
"""Latency percentiles are over this many most recent calls."""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of the latency of the calls in the window, in seconds (None: no calls yet)."""

    count: int
    """Calls in the window."""
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencySummary:
        if not samples:
            return cls(0, None, None, None)
        ordered = sorted(samples)

        def rank(fraction: float) -> float:  # nearest rank
            return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]

        return cls(len(ordered), rank(0.50), rank(0.95), rank(0.99))

    def quantiles(self) -> list[tuple[str, float]]:
        """``[("0.5", p50), ("0.95", p95), ("0.99", p99)]``, without those not known yet."""
        known = (("0.5", self.p50), ("0.95", self.p95), ("0.99", self.p99))
        return [(quantile, value) for quantile, value in known if value is not None]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateMetrics:
    """A store's state and traffic. Each store's docs say which figures are exact and which are
    estimates (and how good)."""

    active_sessions: int
    """Sessions that hold history now."""
    avg_history_size: float
    """Messages per active session, on average."""
    storage_used: int
    """Bytes the sessions take in the store (an estimate for every built-in store)."""
    load_latency: LatencySummary
    save_latency: LatencySummary
    """Of appends and saves."""
    loads: int
    appends: int
    saves: int
    deletes: int
    errors: int
    """Calls that raised a store error (bad input is not counted)."""
    trims: int
    """Appends that dropped old messages to stay within ``max_messages``."""
    expirations: int
    evictions: int


class Recorder:
    """Counts calls and keeps the latency window: the one piece every store shares."""

    __slots__ = (
        "appends",
        "deletes",
        "errors",
        "load_window",
        "loads",
        "save_window",
        "saves",
        "trims",
    )

    def __init__(self) -> None:
        self.loads = self.appends = self.saves = self.deletes = 0
        self.errors = self.trims = 0
        self.load_window: deque[float] = deque(maxlen=WINDOW)
        self.save_window: deque[float] = deque(maxlen=WINDOW)

    def metrics(
        self,
        *,
        active_sessions: int,
        messages: int,
        storage_used: int,
        expirations: int,
        evictions: int,
    ) -> StateMetrics:
        """This recorder's figures with the store's own."""
        return StateMetrics(
            active_sessions=active_sessions,
            avg_history_size=messages / active_sessions if active_sessions else 0.0,
            storage_used=storage_used,
            load_latency=LatencySummary.of(self.load_window),
            save_latency=LatencySummary.of(self.save_window),
            loads=self.loads,
            appends=self.appends,
            saves=self.saves,
            deletes=self.deletes,
            errors=self.errors,
            trims=self.trims,
            expirations=expirations,
            evictions=evictions,
        )


clock = time.perf_counter
"""The clock latencies are read from."""


class StoreWrapper:
    """What every wrapper of a store shares: it closes the store it wraps, and lends its other
    methods (``lease()``, ``exists()``, ...) through.

    A wrapper has the optional protocols (summaries, versions, leases, snapshots, the
    conversation index) of the store it wraps, and only those: each instance is of a subclass
    made for what its store offers, whose methods call the wrapper's ``__getattr__``. (Since
    Python 3.12, ``isinstance`` against a protocol looks at the class, never at ``__getattr__``.)
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        store = args[0] if args else kwargs.get("store", kwargs.get("inner"))
        lent = frozenset(
            name for name in _protocol_methods() if hasattr(store, name) and not hasattr(cls, name)
        )
        made: type[Self] = _lending(cast(Any, cls), lent) if lent else cls
        return super().__new__(made)

    def __init__(self, store: Any) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def aclose(self) -> None:
        await self.store.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@functools.cache
def _protocol_methods() -> tuple[str, ...]:
    """The methods of the optional store protocols."""
    from chatstate.sessions import ConversationIndex
    from chatstate.stores.base import (
        SessionLeases,
        SessionSummaries,
        SessionTransfer,
        VersionedStore,
    )

    protocols = (
        SessionSummaries,
        VersionedStore,
        SessionLeases,
        SessionTransfer,
        ConversationIndex,
    )
    return tuple(
        name
        for protocol in protocols
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    )


@functools.cache
def _lending(cls: type[Any], names: frozenset[str]) -> type[Any]:
    """``cls``, with a method for each of ``names`` that calls ``self.__getattr__(name)``."""

    def lend(name: str) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self.__getattr__(name)(*args, **kwargs)

        method.__name__ = method.__qualname__ = name
        return method

    namespace = {name: lend(name) for name in sorted(names)}
    namespace["__module__"] = cls.__module__
    namespace["__qualname__"] = cls.__qualname__
    namespace["__doc__"] = cls.__doc__
    return type(cls.__name__, (cls,), namespace)


class InstrumentedStore(StoreWrapper):
    """Any :class:`~chatstate.StateStore`, measured: ``InstrumentedStore(store)`` behaves as
    ``store`` does and answers ``await metrics()`` with the same :class:`StateMetrics` the
    built-in stores give, from what passes through it.

    Calls, errors and latencies are exact for this wrapper's traffic. The store's contents are
    known only as far as the traffic shows them: ``active_sessions`` counts the sessions this
    wrapper saw written or loaded non-empty and not expired since (by the TTLs it passed), at most
    ``max_tracked`` of them (the least recently seen are forgotten); ``avg_history_size`` is their
    last known length, ``storage_used`` their messages' estimated size as JSON text. Sessions
    written by other processes, or expired by the store otherwise, are not seen. ``trims`` counts
    appends that returned fewer messages than the known history plus the appended ones.
    """

    def __init__(self, store: Any, *, max_tracked: int = 100_000) -> None:
        super().__init__(store)
        self._recorder = Recorder()
        self._tracked: OrderedDict[str, _Seen] = OrderedDict()
        self._max_tracked = max_tracked
        self._expirations = 0
        self._evictions = 0

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        started = clock()
        messages: list[Message] = await self._call(self.store.load(session_id, limit=limit))
        self._recorder.loads += 1
        self._recorder.load_window.append(clock() - started)
        if limit is None:
            self._see(session_id, len(messages), _bytes(messages), keep_expiry=True)
        return messages

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        started = clock()
        await self._call(self.store.save(session_id, messages, ttl=ttl))
        self._recorder.saves += 1
        self._recorder.save_window.append(clock() - started)
        self._see(session_id, len(messages), _bytes(messages), ttl=ttl)

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        started = clock()
        length: int = await self._call(
            self.store.append(session_id, messages, max_messages=max_messages, ttl=ttl)
        )
        recorder = self._recorder
        recorder.appends += 1
        recorder.save_window.append(clock() - started)
        seen = self._live(session_id)
        known = seen.length if seen is not None else 0
        if length < known + len(messages):
            recorder.trims += 1
        size = (seen.size if seen is not None else 0) + _bytes(messages)
        if known + len(messages):
            size = size * length // (known + len(messages))  # what the trim left, roughly
        self._see(session_id, length, size, ttl=ttl)
        return length

    async def delete(self, session_id: str) -> bool:
        existed: bool = await self._call(self.store.delete(session_id))
        self._recorder.deletes += 1
        self._tracked.pop(session_id, None)
        return existed

    async def metrics(self) -> StateMetrics:
        """The figures of the traffic this wrapper saw (see the class)."""
        now = time.monotonic()
        for session_id in [sid for sid, seen in self._tracked.items() if seen.expired(now)]:
            del self._tracked[session_id]
            self._expirations += 1
        tracked = self._tracked.values()
        return self._recorder.metrics(
            active_sessions=len(self._tracked),
            messages=sum(seen.length for seen in tracked),
            storage_used=sum(seen.size for seen in tracked),
            expirations=self._expirations,
            evictions=self._evictions,
        )

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except InvalidInputError:
            raise  # bad input, not a failure of the store
        except Exception:
            self._recorder.errors += 1
            raise

    def _live(self, session_id: str) -> _Seen | None:
        seen = self._tracked.get(session_id)
        if seen is not None and seen.expired(time.monotonic()):
            del self._tracked[session_id]
            self._expirations += 1
            return None
        return seen

    def _see(
        self,
        session_id: str,
        length: int,
        size: int,
        *,
        ttl: TTL = None,
        keep_expiry: bool = False,
    ) -> None:
        if not length:
            self._tracked.pop(session_id, None)
            return
        old = self._tracked.pop(session_id, None)
        if keep_expiry:
            expires_at = old.expires_at if old is not None else None
        else:
            seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
            expires_at = None if seconds is None else time.monotonic() + seconds
        self._tracked[session_id] = _Seen(length, size, expires_at)
        while len(self._tracked) > self._max_tracked:
            self._tracked.popitem(last=False)
            self._evictions += 1


@dataclass(frozen=True, slots=True)
class _Seen:
    length: int
    size: int
    expires_at: float | None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _bytes(messages: Sequence[Message]) -> int:
    """Estimated bytes of messages as JSON: their text and a little framing."""
    return sum(len(message.text) + 32 for message in messages)
