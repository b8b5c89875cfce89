"""A store of items that are not chatstate messages, over the same backends as the stores.

The framework integrations (:mod:`chatstate.integrations`) keep their framework's own items (an
agent SDK's input items, another library's chat messages) in sessions of an :class:`ItemStore`:
the same backend, so the same bounds, expiry, write ids, fences and leases, with the codec's
compression and encryption stages run on the bytes of the items' own format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, Self, TypeVar

from chatstate._checks import (
    check_count,
    check_limit,
    check_max_messages,
    check_on_corrupt,
    check_session_id,
    check_ttl,
)
from chatstate._compression import Compression
from chatstate._locks import KeyedLock
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.errors import ConfigurationError, StateLoadError, StateSaveError
from chatstate.stores._backend import Backend, Popped
from chatstate.stores._codec import DEFAULT_COMPRESS_OVER, DEFAULT_MAX_MESSAGE_BYTES, EntryCodec
from chatstate.stores._core import BackendStore
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook
from chatstate.stores._item_codec import ItemCodec, ItemFormat
from chatstate.stores._lease import Leasing
from chatstate.stores._reporting import clock as _clock
from chatstate.stores._writes import check_write_id, fence_for, new_write_id
from chatstate.stores.base import TTL

__all__ = ["ItemStore"]

T = TypeVar("T")


class ItemStore(Leasing, Generic[T]):
    """Sessions of items of any kind ``T``, oldest first, over a
    :class:`~chatstate.stores.Backend`: ``ItemStore(backend, JsonItems())``, or, sharing a store's
    backend and keys, ``ItemStore.over(store, JsonItems())``.

    Each item is written by its ``format`` (an :class:`~chatstate.stores.ItemFormat`:
    :class:`~chatstate.stores.JsonItems` for JSON values, :class:`~chatstate.stores.PydanticItems`
    for what pydantic validates), then compressed over ``compress_over`` bytes and, with
    ``encryption``, sealed, as a message store's entries are. Every write is one atomic step of
    the backend, with a write id (a retry is applied once) and, under :meth:`lease`, the lease's
    fence. ``max_items`` keeps the newest that many of a session at every append (None: all);
    ``ttl`` sets a session to expire that long after its last append (None: never). An entry
    that cannot be decoded is ``"skip"``-ped (logged, counted in ``corrupt_entries``) or
    ``"raise"``-s CorruptEntryError (``on_corrupt``).

    A session id names one session of the backend, whatever wrote it: keep items and chatstate
    messages in sessions of their own (another prefix, file or instance). An item store made
    ``over`` a store leaves the backend to it (its :meth:`aclose` closes nothing); one made on a
    backend closes it.
    """

    backend: Backend[Any]

    def __init__(
        self,
        backend: Backend[Any],
        format: ItemFormat[T],
        *,
        max_items: int | None = None,
        ttl: TTL = None,
        encryption: Encryption | None = None,
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        compression: Compression = "auto",
        max_item_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        on_corrupt: Literal["skip", "raise"] = "skip",
        hooks: Sequence[Hook] = (),
        clock: Clock = SYSTEM_CLOCK,
        owns_backend: bool = True,
    ) -> None:
        super().__init__(hooks)
        if encryption is not None and not isinstance(encryption, Encryption):
            raise ConfigurationError(
                f"encryption must be a chatstate.Encryption, got {type(encryption).__name__}"
            )
        self.backend = backend
        self.clock = clock
        self.codec = ItemCodec(
            format,
            compress_over=None
            if compress_over is None
            else check_count(compress_over, name="compress_over", minimum=0),
            compression=compression,
            max_bytes=None
            if max_item_bytes is None
            else check_count(max_item_bytes, name="max_item_bytes"),
            encryption=encryption,
        )
        self.max_items = check_max_messages(max_items, name="max_items")
        self.ttl = check_ttl(ttl)
        self._on_corrupt = check_on_corrupt(on_corrupt)
        self._owns_backend = owns_backend
        self._local_leases = KeyedLock()

    @classmethod
    def over(cls, store: BackendStore[Any], format: ItemFormat[T], **options: Any) -> ItemStore[T]:
        """An item store on ``store``'s backend, with its encryption keys (unless ``encryption=``
        is given) and clock; ``options`` as for the constructor. The store keeps the backend:
        close the store, not this."""
        if not isinstance(store, BackendStore):
            raise ConfigurationError(
                f"store must be a chatstate store built on a backend, got {type(store).__name__}"
            )
        codec = store._codec
        if "encryption" not in options and isinstance(codec, EntryCodec):
            options["encryption"] = codec.encryption
        options.setdefault("clock", store.clock)
        return cls(store.backend, format, owns_backend=False, **options)

    def __repr__(self) -> str:
        return f"ItemStore({self.backend!r})"

    async def get(self, session_id: str, *, limit: int | None = None) -> list[T]:
        """The newest ``limit`` items of the session (all if None), oldest first. With
        ``on_corrupt="skip"``, a skipped entry does not count: up to ``limit`` readable items."""
        session_id = check_session_id(session_id)
        limit = check_limit(limit)
        started = _clock()
        window = limit
        while True:
            try:
                page = await self.backend.read(
                    session_id, limit=window, summary=False, touch=None, numbers=False
                )
            except Exception as exc:
                self._fail(exc, "load", session_id, started, StateLoadError, "loading")
            items, skipped = self.codec.decode(
                page.entries, on_corrupt=self._on_corrupt, session_id=session_id
            )
            if not skipped or window is None or len(page.entries) < window:
                break
            if len(items) >= limit:  # type: ignore[operator]  # window is not None: nor limit
                break
            window *= 2  # corrupt entries among the newest: read further back
        if skipped:
            self._skipped(skipped, session_id)
        self._loaded(session_id, started, len(items), skipped)
        return items if limit is None else items[-limit:] if limit else []

    async def length(self, session_id: str) -> int:
        """How many entries the session holds (0: none)."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            page = await self.backend.read(
                session_id, limit=0, summary=False, touch=None, numbers=True
            )
        except Exception as exc:
            self._fail(exc, "version", session_id, started, StateLoadError, "reading")
        self._report("version", session_id, started)
        return page.length

    async def append(
        self, session_id: str, items: Sequence[T], *, write_id: str | None = None
    ) -> int:
        """Append ``items`` in one atomic step (never interleaved with another call's), keep the
        newest ``max_items`` and set the expiry; the session's length after it. ``write_id`` as
        for :meth:`~chatstate.stores.BackendStore.append`: a retry is applied once."""
        session_id = check_session_id(session_id)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        entries = self.codec.encode(items, session_id=session_id)
        if not entries:
            return await self.length(session_id)
        started = _clock()
        try:
            written = await self.backend.append(
                session_id,
                entries,
                max_entries=self.max_items,
                ttl=self.ttl,
                write_id=token,
                fence=fence_for(self, session_id),
            )
        except Exception as exc:
            self._fail(
                exc, "append", session_id, started, StateSaveError, "appending to", (),
                write_id or token,
            )  # fmt: skip
        self._appended(session_id, started, len(entries), written.trimmed)
        return written.length

    async def pop(self, session_id: str, count: int = 1, *, write_id: str | None = None) -> list[T]:
        """Remove the newest ``count`` items of the session and return them, oldest first, in
        one atomic step (fewer if it holds fewer; none if it does not exist). With
        ``on_corrupt="skip"``, an unreadable entry is removed, skipped and not counted: the pop
        goes on to older entries. A pop that empties the session deletes it. ``write_id`` as for
        :meth:`append`; a retry of a pop that was applied returns what it removed where the
        backend keeps that (Redis: the session's last pop), else nothing."""
        session_id = check_session_id(session_id)
        wanted = check_count(count, name="count")
        pop = getattr(self.backend, "pop", None)
        if pop is None:
            raise ConfigurationError(
                f"the backend {self.backend.name!r} has no pop(): it cannot remove the newest "
                "items atomically"
            )
        token = new_write_id() if write_id is None else check_write_id(write_id)
        started = _clock()
        items: list[T] = []
        while True:
            try:
                popped: Popped[Any] = await pop(
                    session_id, wanted, write_id=token, fence=fence_for(self, session_id)
                )
            except Exception as exc:
                self._fail(
                    exc, "pop", session_id, started, StateSaveError, "popping from", (),
                    write_id or token,
                )  # fmt: skip
            got, skipped = self.codec.decode(
                popped.entries, on_corrupt=self._on_corrupt, session_id=session_id
            )
            items[:0] = got
            if skipped:
                self._skipped(skipped, session_id)
            wanted -= len(got)
            if not skipped or not wanted or not popped.applied or not popped.length:
                break
            token = new_write_id()  # the rest: a pop of its own
        self._report("pop", session_id, started, len(items))
        return items

    async def replace(
        self, session_id: str, items: Sequence[T], *, write_id: str | None = None
    ) -> None:
        """Make ``items`` the whole session, atomically (none: delete it), expiring ``ttl``
        from now."""
        session_id = check_session_id(session_id)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        entries = self.codec.encode(items, session_id=session_id)
        if self.max_items is not None:
            entries = entries[-self.max_items :]
        fence = fence_for(self, session_id)
        started = _clock()
        try:
            if entries:
                await self.backend.replace(
                    session_id,
                    entries,
                    summary=None,
                    ttl=self.ttl,
                    overwrite=True,
                    write_id=token,
                    fence=fence,
                )
            else:
                await self.backend.delete(session_id, write_id=token, fence=fence)
        except Exception as exc:
            self._fail(
                exc, "save", session_id, started, StateSaveError, "saving", (), write_id or token
            )
        self._report("save", session_id, started, len(entries))

    async def delete(self, session_id: str, *, write_id: str | None = None) -> bool:
        """Forget the session; whether it existed."""
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
        self._report("delete", session_id, started)
        return existed

    async def aclose(self) -> None:
        """Close the backend, if this store owns it (see the class). Idempotent."""
        if self._owns_backend:
            self._owns_backend = False
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
