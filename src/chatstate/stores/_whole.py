"""Whole-session writes of the store core: folds into a summary, snapshots and restores (the
:class:`~chatstate.stores.SessionSummaries` and :class:`~chatstate.stores.SessionTransfer`
halves of :class:`~chatstate.stores.BackendStore`)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from chatstate._checks import check_session_id
from chatstate.errors import StateLoadError, StateSaveError, StoreError
from chatstate.messages import Message
from chatstate.stores._backend import Describing, Written
from chatstate.stores._metadata import MetadataOps
from chatstate.stores._reporting import clock as _clock
from chatstate.stores._writes import check_write_id, fence_for, new_write_id
from chatstate.stores.base import (
    Fold,
    SessionSnapshot,
    check_snapshot,
    run_fold,
    snapshot_numbers,
)

__all__ = ["WholeSessions"]

E = TypeVar("E")


class WholeSessions(MetadataOps[E], Generic[E]):
    """Folds, snapshots and restores (and the metadata that goes with them): mixed into
    :class:`~chatstate.stores.BackendStore`."""

    def _wrote(self, session_id: str) -> None:
        """A write other than an append ended (or failed, its outcome unknown)."""

    def _decode_one(
        self, entry: E | None, session_id: str, on_corrupt: Literal["skip", "raise"]
    ) -> Message | None:
        """A summary's entry decoded (None for none, or a corrupt one skipped and counted)."""
        if entry is None:
            return None
        decoded, skipped = self._codec.decode(
            [entry], on_corrupt=on_corrupt, session_id=session_id, summary=True
        )
        if skipped:
            self._skipped(skipped, session_id)
        return decoded[0] if decoded else None

    # -- summaries -------------------------------------------------------------------------------

    async def compact(self, session_id: str, fold: Fold) -> bool:
        """Fold the oldest messages of the session into its summary (see
        :class:`~chatstate.stores.SessionSummaries`): read the history and the summary in one
        step, await ``fold``, and commit only if no save, fold or delete came between. What turns
        appended meanwhile stays; what their trims removed is not removed twice (the fold names
        what it covers by sequence number)."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            page = await self.backend.read(
                session_id, limit=None, summary=True, touch=None, numbers=True
            )
        except Exception as exc:
            self._fail(exc, "compact", session_id, started, StoreError, "compacting")
        if not page.entries:
            return False
        # A damaged entry raises rather than being skipped: the fold must cover exactly the
        # entries it is given, and nothing unreadable is ever summarised away.
        history, _ = self._codec.decode(page.entries, on_corrupt="raise", session_id=session_id)
        summary = self._decode_one(page.summary, session_id, "raise")
        result = await run_fold(fold, history, summary)
        if result is None:
            return False
        count, new_summary = result
        (entry,) = self._codec.encode([new_summary], session_id=session_id, summary=True)
        started = _clock()
        try:
            done = await self.backend.compact(
                session_id,
                generation=page.generation,
                before_seq=page.seqs()[count - 1] + 1,  # numbers may have gaps
                summary=entry,
                write_id=new_write_id(),
            )
        except Exception as exc:
            self._fail(exc, "compact", session_id, started, StoreError, "compacting")
        finally:
            self._wrote(session_id)
        self._report("compact", session_id, started, count)
        return done

    # -- whole sessions --------------------------------------------------------------------------

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The whole session as it stands, in one read (see
        :class:`~chatstate.stores.SessionTransfer`); None if there is none. A damaged entry
        raises: a copy never loses one silently."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            raw = await self.backend.snapshot(session_id)
        except Exception as exc:
            self._fail(exc, "snapshot", session_id, started, StateLoadError, "reading")
        if raw is None:
            self._report("snapshot", session_id, started)
            return None
        messages, _ = self._codec.decode(raw.entries, on_corrupt="raise", session_id=session_id)
        summary = self._decode_one(raw.summary, session_id, "raise")
        metadata = None if raw.meta is None else self._meta_of(raw.meta, session_id, "raise")
        self._report("snapshot", session_id, started, len(messages))
        ids = None if raw.numbers is None else [str(number) for number in raw.numbers]
        return SessionSnapshot(messages, summary, raw.ttl, ids, metadata)

    async def restore(
        self,
        session_id: str,
        snapshot: SessionSnapshot,
        *,
        overwrite: bool = False,
        write_id: str | None = None,
    ) -> bool:
        """Write ``snapshot`` as the whole session in one step; an existing session only with
        ``overwrite`` (see :class:`~chatstate.stores.SessionTransfer`). A snapshot with ``ids``
        (as :meth:`snapshot` gives it) keeps them: each message has the same id after the
        restore, and the session's next messages are numbered after them (and after every id
        the session gave before, if it existed). ``write_id`` as for :meth:`append`: a retried
        restore that finds its own first run's session reports True."""
        session_id = check_session_id(session_id)
        messages, summary, seconds = check_snapshot(snapshot)
        numbers = snapshot_numbers(snapshot)
        # Given only with ids: a backend of one's own may take no numbers.
        kept: dict[str, Any] = {} if numbers is None else {"numbers": numbers}
        if snapshot.metadata is not None:
            kept["meta"] = self._meta_entry(session_id, snapshot.metadata)
        elif isinstance(self.backend, Describing):
            kept["meta"] = None  # the whole session: no metadata, as in the snapshot
        token = new_write_id() if write_id is None else check_write_id(write_id)
        encode = self._codec.encode
        entries = encode(messages, session_id=session_id)
        summary_entry = (
            None if summary is None else encode([summary], session_id=session_id, summary=True)[0]
        )
        started = _clock()
        try:
            written: Written | None = await self.backend.replace(
                session_id,
                entries,
                summary=summary_entry,
                ttl=seconds,
                overwrite=bool(overwrite),
                write_id=token,
                fence=fence_for(self, session_id),
                **kept,
            )
        except Exception as exc:
            self._fail(
                exc, "restore", session_id, started, StateSaveError, "restoring", messages,
                write_id or token,
            )  # fmt: skip
        finally:
            self._wrote(session_id)
        self._report("restore", session_id, started, len(messages))
        return written is not None
