"""Session metadata in the store core: a small JSON document per session, and its times.

Each session may carry a document of the application's (a title, tags, anything that is JSON:
see :func:`check_metadata`), stored beside its history as one more entry of the codec (so it is
compressed and encrypted like the messages, and sealed to its place: it opens as the metadata of
that session only), written atomically with a turn (``append(..., metadata=)``) or alone
(:meth:`MetadataOps.set_metadata`), loaded with the history in the same round trip
(:meth:`MetadataOps.load_with_metadata`), expiring and deleted with the session. The backend
keeps two times beside it: when the session was created and when its history was last written
(:class:`SessionInfo`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from chatstate._checks import check_limit, check_session_id
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    InvalidMetadataError,
    StateLoadError,
    StateSaveError,
)
from chatstate.messages import Message
from chatstate.stores._backend import Backend, Describing, Page
from chatstate.stores._codec import Codec, DocumentCodec
from chatstate.stores._reporting import Reporting
from chatstate.stores._reporting import clock as _clock
from chatstate.stores._writes import check_write_id, fence_for, new_write_id

__all__ = ["MAX_METADATA_BYTES", "MetadataOps", "SessionInfo", "check_metadata"]

E = TypeVar("E")

MAX_METADATA_BYTES = 64 << 10
"""The most a session's metadata may take, as compact JSON (UTF-8)."""

_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a store knows of a session beside its history: the application's ``metadata`` (a
    new dict, the caller's own; empty if none was set), when the session was created and when its
    history was last written (an append, a save, an edit, a pop; UTC; None where the store does
    not know, as for a session written before chatstate kept the times)."""

    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def title(self) -> str | None:
        """``metadata["title"]`` if it is a str (the key a chat sidebar shows)."""
        return title_of(self.metadata)


def title_of(metadata: Mapping[str, Any]) -> str | None:
    """A session's title: ``metadata["title"]`` if it is a str."""
    title = metadata.get("title")
    return title if isinstance(title, str) else None


def check_metadata(metadata: object) -> bytes:
    """The compact JSON of a session's metadata, or InvalidMetadataError naming what is wrong:
    a mapping with str keys whose values are JSON (dicts with str keys, lists, str, int,
    finite float, bool, None), at most :data:`MAX_METADATA_BYTES` bytes. What is accepted reads
    back equal (a tuple would read back as a list, an int key as a str: both are refused)."""
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(
            f"metadata must be a mapping (a dict of JSON values), got {type(metadata).__name__}"
        )
    _check_value(metadata, "metadata", 0)
    payload = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()
    if len(payload) > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"metadata is {len(payload):,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}; "
            "nothing was stored"
        )
    return payload


def _check_value(value: object, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidMetadataError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or type(value) in (str, bool, int):
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise InvalidMetadataError(f"{where} is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidMetadataError(
                    f"{where} has the key {key!r} ({type(key).__name__}): keys must be str"
                )
            _check_value(item, f"{where}[{key!r}]", depth + 1)
        return
    if type(value) is list:
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", depth + 1)
        return
    raise InvalidMetadataError(
        f"{where} is a {type(value).__name__}: metadata holds only JSON values (dict, list, "
        "str, int, float, bool, None)"
    )


def _when(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


class MetadataOps(Reporting, Generic[E]):
    """Mixed into :class:`~chatstate.stores.BackendStore`: session metadata."""

    backend: Backend[E]
    _codec: Codec[E]
    _on_corrupt: Literal["skip", "raise"]
    _touch: float | None

    def _decoded(self, page: Page[E], session_id: str, started: float) -> list[Message]:
        raise NotImplementedError  # given by BackendStore

    async def metadata(self, session_id: str) -> SessionInfo | None:
        """The session's metadata and times; None if there is no session."""
        session_id = check_session_id(session_id)
        page, started = await self._read_meta(session_id, 0, touch=None)
        info = self._info(page, session_id)
        self._report("metadata", session_id, started)
        return info

    async def load_with_metadata(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], SessionInfo | None]:
        """:meth:`~chatstate.stores.BackendStore.load` and :meth:`metadata`, in one step (one
        round trip): the messages, and the session's metadata and times (None: no session)."""
        session_id = check_session_id(session_id)
        if limit is not None:
            check_limit(limit)
        page, started = await self._read_meta(session_id, limit, touch=self._touch)
        messages = self._decoded(page, session_id, started)
        return messages, self._info(page, session_id)

    async def set_metadata(
        self,
        session_id: str,
        metadata: Mapping[str, Any] | None,
        *,
        write_id: str | None = None,
    ) -> bool:
        """Make ``metadata`` the session's metadata (the whole document: keys not given are
        gone; None removes it), atomically, changing nothing else (not the history, its version
        or its times). Returns False, writing nothing, if there is no session: metadata lives
        with a history (give a new session's with its first turn: ``append(...,
        metadata=)``). ``write_id`` as for ``append``; under a lease, fenced like every write."""
        session_id = check_session_id(session_id)
        entry = None if metadata is None else self._meta_entry(session_id, metadata)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        describing = self._describing()
        started = _clock()
        try:
            written = await describing.write_meta(
                session_id, entry, write_id=token, fence=fence_for(self, session_id)
            )
        except Exception as exc:
            self._fail(
                exc, "metadata", session_id, started, StateSaveError, "writing the metadata of",
                (), write_id or token,
            )  # fmt: skip
        self._report("metadata", session_id, started)
        return written is not None

    # -- for the core's other writes -------------------------------------------------------------

    def _meta_entry(self, session_id: str, metadata: object) -> E:
        """The entry of ``metadata`` for the backend (checked; InvalidMetadataError)."""
        payload = check_metadata(metadata)
        self._describing()
        codec: Any = self._codec
        if not callable(getattr(codec, "encode_doc", None)):
            raise ConfigurationError(
                f"the store's codec ({type(codec).__name__}) has no encode_doc(): it cannot "
                "store metadata"
            )
        documents: DocumentCodec[E] = codec
        return documents.encode_doc(payload, session_id=session_id)

    def _meta_of(
        self, entry: E | None, session_id: str, on_corrupt: Literal["skip", "raise"] | None = None
    ) -> dict[str, Any]:
        """The document in a metadata entry ({} for none); a damaged one is skipped (logged and
        counted, read as {}) or raised, as ``on_corrupt`` (default: the store's) says."""
        if entry is None:
            return {}
        documents: DocumentCodec[E] = self._codec  # type: ignore[assignment]
        try:
            document = json.loads(documents.decode_doc(entry, session_id=session_id))
            if type(document) is not dict:
                raise CorruptEntryError("stored metadata is not a JSON object")
        except (CorruptEntryError, ValueError) as exc:
            if (on_corrupt or self._on_corrupt) == "raise":
                if isinstance(exc, CorruptEntryError):
                    raise
                raise CorruptEntryError(
                    f"the metadata of session {session_id!r} is not JSON: {exc}",
                    session_id=session_id,
                ) from exc
            self._skipped(1, session_id)
            return {}
        return document

    def _describing(self) -> Describing[E]:
        backend: Any = self.backend
        if not isinstance(backend, Describing):
            raise ConfigurationError(
                f"the backend {self.backend.name!r} has no write_meta() (the "
                "chatstate.stores.Describing protocol): it keeps no session metadata"
            )
        describing: Describing[E] = backend
        return describing

    async def _read_meta(
        self, session_id: str, limit: int | None, touch: float | None
    ) -> tuple[Page[E], float]:
        """The page (with its version: whether the session exists) and when the read began."""
        self._describing()
        started = _clock()
        backend: Any = self.backend
        try:
            page: Page[E] = await backend.read(
                session_id, limit=limit, summary=False, touch=touch, numbers=True, meta=True
            )
        except Exception as exc:
            self._fail(exc, "load", session_id, started, StateLoadError, "loading")
        return page, started

    def _info(self, page: Page[E], session_id: str) -> SessionInfo | None:
        if page.version == 0:
            return None
        return SessionInfo(
            self._meta_of(page.meta, session_id), _when(page.created), _when(page.updated)
        )
