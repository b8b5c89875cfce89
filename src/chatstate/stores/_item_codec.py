"""Items that are not chatstate messages, as a backend's entries: a format for their bytes, then
the codec's own compression and encryption stages.

An item entry is the envelope of :mod:`chatstate.stores._envelope` with codec 1 (items) in the
low bits of its second byte::

    byte 0     1 (the format version)
    byte 1     low 4 bits: 1 (an item's bytes, as its format wrote them); high 4 bits: the
               compression (0 none, 1 zlib, 2 zstd)
    then       the payload

and, with encryption, that sealed as a history entry is (format 3, :mod:`chatstate.stores.
_encryption`). A message store that meets an item entry refuses it (UnsupportedFormatError: an
unknown codec), and an item store a message entry (CorruptEntryError): neither misreads the
other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

import pydantic_core
from pydantic import TypeAdapter

from chatstate import _compression
from chatstate._compression import Compression
from chatstate.errors import CorruptEntryError, DecryptionError, InvalidInputError, UnknownKeyError
from chatstate.stores._encryption import HISTORY, Encryption
from chatstate.stores._envelope import ENCRYPTED

__all__ = ["ItemCodec", "ItemFormat", "JsonItems", "PydanticItems"]

T = TypeVar("T")

ITEMS = 1
"""The envelope's codec id of an item entry (0 is a chatstate message as JSON)."""

_FORMAT = 1


class ItemFormat(Protocol[T]):
    """How an item becomes bytes and back: ``load(dump(item))`` must equal ``item``."""

    def dump(self, item: T) -> bytes:
        """The item's bytes; any exception means it cannot be stored (nothing of the call is)."""
        ...

    def load(self, data: bytes) -> T:
        """The item of ``data``; any exception means the entry is corrupt."""
        ...


class JsonItems:
    """Items that are JSON values (dicts of str, numbers, bools, None, lists): dumped with the
    standard library's rules (a value JSON cannot hold, or NaN, is refused), loaded back equal."""

    def dump(self, item: Any) -> bytes:
        return json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    def load(self, data: bytes) -> Any:
        return pydantic_core.from_json(data)


class PydanticItems(Generic[T]):
    """Items that pydantic validates: ``PydanticItems(SomeModel)`` or
    ``PydanticItems(TypeAdapter(...))``; dumped with ``dump_json``, loaded with
    ``validate_json``."""

    def __init__(self, kind: type[T] | TypeAdapter[T]) -> None:
        self.adapter: TypeAdapter[T] = kind if isinstance(kind, TypeAdapter) else TypeAdapter(kind)

    def dump(self, item: T) -> bytes:
        return self.adapter.dump_json(item)

    def load(self, data: bytes) -> T:
        return self.adapter.validate_json(data)


class ItemCodec(Generic[T]):
    """Turns items into entries and back: the format, then compression over ``compress_over``
    bytes, then, with ``encryption``, sealing (each entry for its session and place)."""

    def __init__(
        self,
        format: ItemFormat[T],
        *,
        compress_over: int | None,
        compression: Compression,
        max_bytes: int | None,
        encryption: Encryption | None,
    ) -> None:
        self.format = format
        self._compress_over = compress_over
        self._kind, self._compress = _compression.compressor(compression)
        self._max_bytes = max_bytes
        self.encryption = encryption

    def encode(self, items: Sequence[T], *, session_id: str) -> list[bytes]:
        """The entries of ``items``; InvalidInputError (nothing encoded) for one that its format
        cannot dump or that is larger than ``max_bytes``."""
        dump, limit, over = self.format.dump, self._max_bytes, self._compress_over
        entries = []
        for index, item in enumerate(items):
            try:
                payload = dump(item)
            except Exception as exc:
                raise InvalidInputError(
                    f"items[{index}] cannot be stored: {type(exc).__name__}: {exc}"
                ) from exc
            if limit is not None and len(payload) > limit:
                raise InvalidInputError(
                    f"items[{index}] is {len(payload):,} bytes; the limit is {limit:,} "
                    "(max_item_bytes); nothing was stored"
                )
            header = bytes((_FORMAT, ITEMS))
            if over is not None and len(payload) > over:
                packed = self._compress(payload)
                if len(packed) < len(payload):
                    header, payload = bytes((_FORMAT, ITEMS | self._kind << 4)), packed
            entries.append(header + payload)
        encryption = self.encryption
        if encryption is not None:
            entries = [encryption.seal(entry, session_id, HISTORY) for entry in entries]
        return entries

    def decode(
        self, entries: Sequence[bytes], *, on_corrupt: Literal["skip", "raise"], session_id: str
    ) -> tuple[list[T], int]:
        """The items of ``entries`` and how many were skipped as corrupt (``"skip"``), or
        CorruptEntryError (``"raise"``). A key not given always raises UnknownKeyError."""
        items: list[T] = []
        skipped = 0
        encryption = self.encryption
        for entry in entries:
            try:
                items.append(self._decode(entry, session_id))
            except UnknownKeyError:
                raise
            except CorruptEntryError as exc:  # DecryptionError too: the store's on_tamper
                refused = (
                    isinstance(exc, DecryptionError)
                    and encryption is not None
                    and encryption.on_tamper == "raise"
                )
                if on_corrupt == "raise" or refused:
                    exc.session_id = session_id
                    raise
                skipped += 1
        return items, skipped

    def _decode(self, entry: bytes, session_id: str) -> T:
        encryption = self.encryption
        if type(entry) is not bytes:  # a message kept as itself by the in-memory store
            raise CorruptEntryError(f"an entry of session {session_id!r} is not an item")
        if entry[:1] == _SEALED:
            if encryption is None:
                key_id = Encryption.key_id_of(entry)
                raise UnknownKeyError(
                    f"an item of session {session_id!r} is encrypted (key {key_id!r}), and this "
                    "store was given no keys: give it encryption=Encryption(keys=...)",
                    session_id=session_id,
                    key_id=key_id,
                )
            entry = encryption.open(entry, session_id, HISTORY)
        elif encryption is not None:
            # With keys, every entry must open: a plain one may have been forged.
            raise DecryptionError(
                f"an item of session {session_id!r} is not encrypted, in a store that encrypts: "
                "it was not written through these keys",
                session_id=session_id,
            )
        if len(entry) < 2 or entry[0] != _FORMAT or entry[1] & 0x0F != ITEMS:
            raise CorruptEntryError(f"an entry of session {session_id!r} is not an item")
        payload = entry[2:]
        kind = entry[1] >> 4
        if kind != _compression.NONE:
            payload = _compression.decompress(kind, payload)
        try:
            return self.format.load(payload)
        except Exception as exc:
            raise CorruptEntryError(
                f"an item of session {session_id!r} does not load: {type(exc).__name__}: {exc}"
            ) from exc


_SEALED = bytes((ENCRYPTED,))
