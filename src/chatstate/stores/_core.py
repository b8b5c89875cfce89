"""The store core: every public method of a store, written once over a :class:`Backend`.

Each call runs the same steps in the same order: check the input, encode through the codec, call
the backend inside one error mapper, decode, and report the operation (to the store's counters
and latency windows, and to every hook as a :class:`~chatstate.stores.StoreEvent`). A backend
only stores entries; a store built here on any backend has every capability of the built-in
ones: bounds, expiry, summaries, versions, snapshots, leases, the conversation index, metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal, Self, TypeAlias, TypeVar

from chatstate._checks import (
    check_limit,
    check_max_messages,
    check_on_corrupt,
    check_session_id,
    check_ttl,
)
from chatstate._locks import KeyedLock
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.errors import (
    ConfigurationError,
    SessionNotFoundError,
    StateLoadError,
    StateSaveError,
)
from chatstate.messages import Message, as_messages
from chatstate.stores._backend import Backend, Page
from chatstate.stores._codec import (
    DEFAULT_COMPRESS_OVER,
    DEFAULT_MAX_MESSAGE_BYTES,
    Codec,
    EntryCodec,
    ObjectCodec,
)
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook
from chatstate.stores._history import HistoryOps
from chatstate.stores._index import Listing
from chatstate.stores._lease import Leasing
from chatstate.stores._near_cache import NearCache
from chatstate.stores._reporting import clock as _clock
from chatstate.stores._whole import WholeSessions
from chatstate.stores._writes import check_write_id, fence_for, new_write_id
from chatstate.stores.base import TTL

__all__ = ["BackendStore"]

E = TypeVar("E")

_AppendNow: TypeAlias = Callable[
    [str, list[E], int | None, float | None, str, str | None], tuple[int, int, bool, bool]
]
"""A backend's optional ``append_now``: :meth:`Backend.append` as a plain call, its result as
``(length, version, trimmed, applied)``."""


class BackendStore(Listing, Leasing, HistoryOps[E], WholeSessions[E]):
    """A :class:`~chatstate.StateStore` over any :class:`~chatstate.stores.Backend`, with every
    optional capability: summaries, versions, snapshots, leases, the conversation index, metrics
    and hooks. The built-in stores are this core over their own backends; a backend of your own:
    docs/stores/custom.md.

    :param backend: where the entries are kept.
    :param codec: how messages become the backend's entries (default: the built-in stores' JSON,
        compressed over 1 KiB, at most 1 MiB a message).
    :param encryption: seal every entry (:class:`~chatstate.Encryption`) before the backend sees
        it; with the default codec only (given with a codec, ConfigurationError).
    :param on_corrupt: an entry that cannot be decoded is ``"skip"``-ped (logged, counted in
        ``corrupt_entries``) or ``"raise"``-s CorruptEntryError. Folds and snapshots always raise:
        they never summarise, copy or delete what they could not read.
    :param sliding_ttl: every load sets the session to expire this long from now, in its own step.
    :param near_cache: a :class:`~chatstate.NearCache`: loads served from this process's memory
        while the history is known current.
    :param hooks: subscribers to the store's events (see :meth:`add_hook`).
    :param clock: what leases wait and keep time with (a :class:`chatstate.clock.Clock`; tests
        give a :class:`chatstate.testing.FakeClock`).
    """

    backend: Backend[E]

    def __init__(
        self,
        backend: Backend[E],
        *,
        codec: Codec[E] | None = None,
        encryption: Encryption | None = None,
        on_corrupt: Literal["skip", "raise"] = "skip",
        sliding_ttl: TTL = None,
        near_cache: NearCache | None = None,
        hooks: Sequence[Hook] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(hooks)
        self.backend = backend
        self.clock = clock
        if codec is None:
            codec = EntryCodec.for_store(  # type: ignore[assignment]  # bytes, a backend's E
                compress_over=DEFAULT_COMPRESS_OVER,
                compression="auto",
                message_cache_bytes=32 << 20,
                max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                encryption=encryption,
            )
        elif encryption is not None:
            raise ConfigurationError("give encryption= to the codec, or no codec (not both)")
        self._codec: Codec[E] = codec  # type: ignore[assignment]
        self._on_corrupt = check_on_corrupt(on_corrupt)
        self._touch = check_ttl(sliding_ttl, name="sliding_ttl")
        # A codec that keeps the messages themselves: a load hands out the page's new list.
        self._keeps_messages = isinstance(self._codec, ObjectCodec)
        if near_cache is not None and not isinstance(near_cache, NearCache):
            raise ConfigurationError(
                f"near_cache must be a chatstate.NearCache, got {type(near_cache).__name__}"
            )
        self.near_cache = None if near_cache is None else near_cache.bind(self, self._touch)
        """The store's :class:`~chatstate.NearCache`, if it has one."""
        # The optional entries_now of a backend in process memory, for the plain load (not with
        # a sliding expiry or a near cache, which a read through the protocol serves).
        entries_now = getattr(backend, "entries_now", None)
        self._entries_now: Callable[[str, int | None], list[E]] | None = (
            entries_now if self._touch is None and self.near_cache is None else None
        )
        # Its optional append_now, for every append: the same step as append, without an await.
        self._append_now: _AppendNow[E] | None = getattr(backend, "append_now", None)
        self._local_leases = KeyedLock()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"

    @property
    def sliding_ttl(self) -> float | None:
        """The sliding expiry in seconds (every load sets it; None: none)."""
        return self._touch

    # -- reads -----------------------------------------------------------------------------------

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        """The newest ``limit`` messages of the session (all if None), oldest first."""
        # The hottest path of all: written out, one await deep, nothing done twice.
        session_id = check_session_id(session_id)
        if limit is not None and (type(limit) is not int or limit < 0):
            check_limit(limit)
        started = _clock()
        if self._entries_now is not None:
            # A backend in this process's memory: its entries, with no await and no page.
            try:
                entries = self._entries_now(session_id, limit)
            except Exception as exc:
                self._fail(exc, "load", session_id, started, StateLoadError, "loading")
        elif self.near_cache is not None:
            return (await self._near_load(session_id, limit))[0]
        else:
            try:
                page = await self.backend.read(
                    session_id, limit=limit, summary=False, touch=self._touch, numbers=False
                )
            except Exception as exc:
                self._fail(exc, "load", session_id, started, StateLoadError, "loading")
            entries = page.entries
        if self._keeps_messages:
            messages: list[Message] = entries  # type: ignore[assignment]  # the messages
            skipped = 0
        else:
            messages, skipped = self._codec.decode(
                entries, on_corrupt=self._on_corrupt, session_id=session_id
            )
            if skipped:
                self._skipped(skipped, session_id)
        self._loaded(session_id, started, len(messages), skipped)
        return messages

    async def load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """:meth:`load`, and the session's summary (None if it has none), in one step."""
        started = _clock()
        page = await self._read(session_id, limit, summary=True, started=started)
        messages = self._decoded(page, session_id, started)
        if page.summary is None or not messages:
            return messages, None
        return messages, self._decode_one(page.summary, session_id, self._on_corrupt)

    async def load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]:
        """:meth:`load`, and the session's version when it was read, in one step."""
        if self.near_cache is not None:
            session_id = check_session_id(session_id)
            return await self._near_load(session_id, check_limit(limit))
        started = _clock()
        page = await self._read(session_id, limit, started=started)
        return self._decoded(page, session_id, started), page.version

    async def version(self, session_id: str) -> int:
        """A number that changes with every write of the session; 0 if it does not exist."""
        started = _clock()
        page = await self._read(session_id, 0, started=started, touch=False)
        self._report("version", session_id, started)
        return page.version

    async def exists(self, session_id: str) -> bool:
        """Whether the session holds history now."""
        return await self.version(session_id) != 0

    async def ttl(self, session_id: str) -> timedelta | None:
        """The time the session has left; None if it never expires or does not exist."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            left = await self.backend.time_left(session_id)
        except Exception as exc:
            self._fail(exc, "version", session_id, started, StateLoadError, "reading the TTL of")
        self._report("version", session_id, started)
        return None if left is None or left is False else timedelta(seconds=left)

    async def _near_load(self, session_id: str, limit: int | None) -> tuple[list[Message], int]:
        """A load through the near cache: served from memory while it is known current."""
        near = self.near_cache
        assert near is not None
        started = _clock()
        now = near.clock()
        entry = near.get(session_id, limit)
        if entry is not None and near.due(entry, now):
            near.version_checks += 1
            page = await self._read(session_id, 0, started=started)  # refreshes a sliding ttl
            if page.version == entry.version:
                entry.checked_at = now
            else:
                entry = None
        if entry is not None:
            messages = near.served(session_id, entry, limit)
            self._loaded(session_id, started, len(messages))
            return messages, entry.version
        began = near.began()
        page = await self._read(session_id, limit, started=started)
        messages = self._decoded(page, session_id, started)
        near.keep(session_id, messages, page.version, limit, began, now)
        return messages, page.version

    async def _read(
        self,
        session_id: str,
        limit: int | None,
        *,
        started: float,
        summary: bool = False,
        touch: bool = True,
    ) -> Page[E]:
        session_id = check_session_id(session_id)
        if limit is not None and (type(limit) is not int or limit < 0):
            check_limit(limit)
        try:
            return await self.backend.read(
                session_id,
                limit=limit,
                summary=summary,
                touch=self._touch if touch else None,
                numbers=True,
            )
        except Exception as exc:
            self._fail(exc, "load", session_id, started, StateLoadError, "loading")

    def _decoded(self, page: Page[E], session_id: str, started: float) -> list[Message]:
        messages, skipped = self._codec.decode(
            page.entries, on_corrupt=self._on_corrupt, session_id=session_id
        )
        if skipped:
            self._skipped(skipped, session_id)
        self._loaded(session_id, started, len(messages), skipped)
        return messages

    # -- writes ----------------------------------------------------------------------------------

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
        write_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Append ``messages`` atomically, keep the newest ``max_messages`` (None or -1: all) and
        set the session to expire ``ttl`` from now (None: never). Returns the new length.

        ``write_id`` names the write (any text of 1 to 128 printable characters; by default the
        store makes one): an append whose id the session has seen among its last 32 writes is
        not applied again. A failed append raises :class:`~chatstate.errors.StateSaveError`
        (nothing stored) or :class:`~chatstate.errors.OutcomeUnknownError` (perhaps stored), both
        carrying ``messages`` and ``write_id``: retrying with both stores the turn exactly once.
        Under a :meth:`lease` of the session, the append is refused with
        :class:`~chatstate.errors.LeaseLostError` (nothing stored) if the lease was lost.

        ``metadata`` (a dict of JSON values: :func:`~chatstate.stores.check_metadata`) becomes
        the session's metadata in the same atomic step (see :meth:`set_metadata`)."""
        written = await self.append_versioned(
            session_id, messages, max_messages=max_messages, ttl=ttl, write_id=write_id,
            metadata=metadata,
        )  # fmt: skip
        return written[0]

    async def append_versioned(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
        write_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[int, int]:
        """:meth:`append`, and the session's version after it."""
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        bound = check_max_messages(max_messages)
        seconds = check_ttl(ttl)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        meta = None if metadata is None else {"meta": self._meta_entry(session_id, metadata)}
        entries = self._codec.encode(new, session_id=session_id)
        if not entries:
            if meta is not None and not await self.set_metadata(
                session_id, metadata, write_id=token
            ):
                raise SessionNotFoundError(
                    f"session {session_id!r} does not exist: its metadata comes with its first "
                    "messages; nothing was stored",
                    session_id=session_id,
                )
            started = _clock()
            page = await self._read(session_id, 0, started=started, touch=False)
            return page.length, page.version
        near = self.near_cache
        started = _clock()
        try:
            if self._append_now is not None and meta is None:
                length, version, trimmed, applied = self._append_now(
                    session_id, entries, bound, seconds, token, fence_for(self, session_id)
                )
            else:
                written = await self.backend.append(
                    session_id,
                    entries,
                    max_entries=bound,
                    ttl=seconds,
                    write_id=token,
                    fence=fence_for(self, session_id),
                    **meta or {},
                )
                length, version = written.length, written.version
                trimmed, applied = written.trimmed, written.applied
        except Exception as exc:
            if near is not None:
                near.dropped(session_id)  # it may have been written all the same
            self._fail(
                exc, "append", session_id, started, StateSaveError, "appending to", new,
                write_id or token,
            )  # fmt: skip
        if near is not None:
            if applied:
                near.appended(session_id, new, length, version)
            else:
                near.dropped(session_id)
        self._appended(session_id, started, len(new), trimmed)
        return length, version

    async def save(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        ttl: TTL = None,
        write_id: str | None = None,
    ) -> None:
        """Replace the whole history of the session, atomically. An empty sequence deletes it.
        ``write_id`` as for :meth:`append`: a retried save applies once, at its first run, and
        never undoes the writes that came after that."""
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        seconds = check_ttl(ttl)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        entries = self._codec.encode(new, session_id=session_id)
        fence = fence_for(self, session_id)
        started = _clock()
        try:
            if entries:
                await self.backend.replace(
                    session_id,
                    entries,
                    summary=None,
                    ttl=seconds,
                    overwrite=True,
                    write_id=token,
                    fence=fence,
                )
            else:
                await self.backend.delete(session_id, write_id=token, fence=fence)
        except Exception as exc:
            self._fail(
                exc, "save", session_id, started, StateSaveError, "saving", new, write_id or token
            )
        finally:
            self._wrote(session_id)
        self._report("save", session_id, started, len(new))

    async def delete(self, session_id: str, *, write_id: str | None = None) -> bool:
        """Forget the session now. Returns whether it existed. ``write_id`` as for
        :meth:`append`: a retried delete removes nothing written after its first run."""
        session_id = check_session_id(session_id)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        started = _clock()
        try:
            existed = await self.backend.delete(
                session_id, write_id=token, fence=fence_for(self, session_id)
            )
        except Exception as exc:
            self._fail(
                exc, "delete", session_id, started, StateSaveError, "deleting", (),
                write_id or token,
            )  # fmt: skip
        finally:
            self._wrote(session_id)
        self._report("delete", session_id, started)
        return existed

    async def aclose(self) -> None:
        """Release the backend's resources (connections, threads). Idempotent."""
        if not self._closed:
            self._closed = True
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _wrote(self, session_id: str) -> None:
        """A write other than an append ended (or failed, its outcome unknown)."""
        if self.near_cache is not None:
            self.near_cache.dropped(session_id)
