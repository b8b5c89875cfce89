"""The turn lease, one algorithm for every backend: a random token, renewed while held, released
only by its holder.

Waiters of one process queue on a local lock first, so only one of them at a time polls the
backend (with jittered backoff); the lease in the backend serialises the processes. A holder whose
lease runs out (renewals refused, or failing for a whole ``ttl``) has its work cancelled and gets
:class:`~chatstate.errors.LeaseLostError`: a turn never goes on believing it holds a lease that
another instance may have taken.
"""

from __future__ import annotations

import logging
import random
import secrets
from typing import Any

import anyio

from chatstate._checks import check_session_id, check_ttl
from chatstate._locks import KeyedLock
from chatstate.clock import Clock
from chatstate.errors import (
    ConfigurationError,
    LeaseLostError,
    LeaseTimeoutError,
    StoreError,
)
from chatstate.stores._reporting import Reporting, clock
from chatstate.stores._writes import fenced

__all__ = ["Lease", "Leasing"]

logger = logging.getLogger("chatstate")

_RELEASE_TIMEOUT = 5.0
"""Seconds a release may take on exit (it expires by itself if it cannot be given back)."""


class Lease:
    """``async with store.lease(session_id, ttl=30, timeout=10):`` holds the session's lease."""

    __slots__ = ("_fence", "_lost", "_scope", "_session_id", "_store", "_task_group", "_timeout",
                 "_token", "_ttl")  # fmt: skip

    def __init__(self, store: Leasing, session_id: str, *, ttl: float, timeout: float):
        seconds = check_ttl(ttl, name="ttl")
        if seconds is None:
            raise ConfigurationError(
                "a lease needs a ttl: seconds, after which a dead holder's ends"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigurationError(f"timeout must be a number of seconds, got {timeout!r}")
        self._store = store
        self._session_id = session_id
        self._ttl = seconds
        self._timeout = max(0.0, float(timeout))
        self._token = secrets.token_hex(16)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._lost = False
        self._fence = fenced(store, session_id, self._token)

    @property
    def token(self) -> str:
        """This holder's token (random, one per lease taken): the fence of the writes made
        under it. While the block runs, every write of the session through this store from
        this task (and the tasks it starts) carries it, and the backend refuses the write,
        atomically, if the token no longer holds the lease: the write raises
        :class:`~chatstate.errors.LeaseLostError` and stores nothing."""
        return self._token

    async def __aenter__(self) -> Lease:
        store, session_id, time = self._store, self._session_id, self._store.clock
        deadline = time.monotonic() + self._timeout
        started = clock()
        try:
            with time.fail_after(self._timeout):
                await store._local_leases.acquire(session_id)
        except TimeoutError:
            raise self._timed_out() from None
        try:
            pause = 0.002
            while not await store._lease_call("acquire", session_id, self._token, self._ttl):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timed_out()
                # Jittered exponential backoff, so waiting instances do not poll in lockstep.
                await time.sleep(min(left, pause * random.uniform(0.5, 1.0)))
                pause = min(pause * 2, 0.1)
            self._task_group = group = anyio.create_task_group()
            await group.__aenter__()
        except BaseException:
            # Failed or cancelled while taking it: the backend may have granted it all the same
            # (a reply lost to the cancellation), so give back whatever this token holds.
            await self._give_back()
            store._local_leases.release(session_id)
            raise
        group.start_soon(self._keep_renewing, name=f"chatstate-lease-renew:{session_id}")
        self._fence.__enter__()
        store._report("lease", session_id, started)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        group, self._task_group = self._task_group, None
        self._fence.__exit__(None, None, None)
        try:
            if group is not None:
                group.cancel_scope.cancel()  # the renewer; the body has ended
                # Not the body's exception: it goes on as it is, never wrapped in a group.
                await group.__aexit__(None, None, None)
        finally:
            await self._give_back()
            self._store._local_leases.release(self._session_id)
        if self._lost:
            raise LeaseLostError(
                f"the lease of session {self._session_id!r} ran out while its turn ran (a turn "
                f"longer than the lease's ttl of {self._ttl:g} s, or a stalled process); the "
                "turn was cancelled",
                session_id=self._session_id,
            )
        return False

    async def _keep_renewing(self) -> None:
        store, session_id, time = self._store, self._session_id, self._store.clock
        interval = self._ttl / 3
        held_until = time.monotonic() + self._ttl
        while True:
            await time.sleep(interval)
            try:
                kept = await store._lease_call("renew", session_id, self._token, self._ttl)
            except Exception as exc:  # a passing fault: try again, while the lease still lasts
                logger.warning("renewing the lease of session %r failed: %s", session_id, exc)
                kept = time.monotonic() + interval < held_until
                if kept:
                    continue
            if not kept:
                logger.warning(
                    "the lease of session %r ran out while its turn ran; cancelling the turn",
                    session_id,
                )
                self._lost = True
                assert self._task_group is not None
                self._task_group.cancel_scope.cancel()
                return
            held_until = time.monotonic() + self._ttl

    async def _give_back(self) -> None:
        with anyio.move_on_after(_RELEASE_TIMEOUT, shield=True):
            try:
                await self._store._lease_call("release", self._session_id, self._token, 0.0)
            except Exception as exc:  # it expires by itself
                logger.warning(
                    "releasing the lease of session %r failed: %s", self._session_id, exc
                )

    def _timed_out(self) -> LeaseTimeoutError:
        return LeaseTimeoutError(
            f"the lease of session {self._session_id!r} was held by another turn for more than "
            f"{self._timeout:g} s",
            session_id=self._session_id,
        )


class Leasing(Reporting):
    """The leases of a core store (:class:`~chatstate.stores.BackendStore`)."""

    _local_leases: KeyedLock
    clock: Clock
    """What leases wait and keep time with (see :mod:`chatstate.clock`)."""

    def lease(self, session_id: str, *, ttl: float, timeout: float) -> Lease:
        """Hold the session's turn lease across every instance sharing the backend (see
        :class:`~chatstate.stores.SessionLeases`): ``async with store.lease(id, ttl=30,
        timeout=10):``."""
        return Lease(self, check_session_id(session_id), ttl=ttl, timeout=timeout)

    async def _lease_call(self, action: str, session_id: str, token: str, ttl: float) -> bool:
        """The backend's ``acquire``/``renew``/``release`` of a lease, its errors mapped."""
        backend = self.backend
        call = (
            backend.acquire_lease(session_id, token, ttl)
            if action == "acquire"
            else backend.renew_lease(session_id, token, ttl)
            if action == "renew"
            else backend.release_lease(session_id, token)
        )
        started = clock()
        try:
            taken: bool = await call
        except Exception as exc:
            self._fail(exc, "lease", session_id, started, StoreError, f"{action} the lease of")
        return taken
