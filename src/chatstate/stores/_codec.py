"""The codec: how messages become a backend's entries and back, in stages.

A message is serialised to JSON, compressed when that pays (:mod:`chatstate.stores._envelope`:
the stored entry's format) and, with ``encryption``, sealed (:mod:`chatstate.stores._encryption`);
a load runs the stages backwards. :class:`EntryCodec` is the codec of every store that keeps bytes
(SQLite, Redis, and any store with encryption); :class:`ObjectCodec` that of the in-memory store,
which keeps the immutable messages themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import Literal, Protocol, TypeVar

from chatstate import _compression
from chatstate._checks import check_count
from chatstate._compression import Compression
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    DecryptionError,
    UnknownKeyError,
)
from chatstate.messages import Message, tokens_of
from chatstate.stores._encryption import HISTORY, LEGACY_PREFIX, METADATA, SUMMARY, Encryption
from chatstate.stores._envelope import (
    _PLAIN_HEADER,
    DEFAULT_COMPRESS_OVER,
    DEFAULT_MAX_MESSAGE_BYTES,
    ENCRYPTED,
    FORMAT_VERSION,
    _check_size,
    _envelope,
    check_sizes,
    decode_aligned,
    decode_entries,
    decode_entry,
    encode_entry,
    entry_payload,
)
from chatstate.stores._windows import MAX_WINDOW, Windows, cost

# The codec is where the stores find every stage: the envelope's names are re-exported here.
__all__ = [
    "DEFAULT_COMPRESS_OVER",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FORMAT_VERSION",
    "Codec",
    "DocumentCodec",
    "EntryCodec",
    "ObjectCodec",
    "check_sizes",
    "decode_entries",
    "decode_entry",
    "encode_entry",
]

E = TypeVar("E")

OnCorrupt = Literal["skip", "raise"]


class Codec(Protocol[E]):
    """Turns messages into a backend's entries and back, for one session (``session_id``), as
    its history or (``summary``) its summary."""

    def encode(
        self, messages: Sequence[Message], *, session_id: str, summary: bool = False
    ) -> list[E]:
        """The entries of ``messages``; InvalidMessageError (and nothing encoded) for one that
        cannot be stored."""
        ...

    def decode(
        self,
        entries: Sequence[E],
        *,
        on_corrupt: OnCorrupt,
        session_id: str,
        summary: bool = False,
    ) -> tuple[list[Message], int]:
        """The messages of ``entries`` and how many were skipped as corrupt (``"skip"``), or
        CorruptEntryError (``"raise"``)."""
        ...


class DocumentCodec(Protocol[E]):
    """A codec that also stores a session's metadata (its JSON, checked by the store) as one
    entry: both built-in codecs are. Metadata needs one."""

    def encode_doc(self, payload: bytes, *, session_id: str) -> E:
        """The entry of a metadata document's JSON."""
        ...

    def decode_doc(self, entry: E, *, session_id: str) -> bytes:
        """The JSON in a metadata entry; CorruptEntryError (or a subclass) if it is damaged."""
        ...


class ObjectCodec:
    """The codec of a backend that keeps the messages themselves (they are immutable): encoding
    checks their size (when ``max_bytes`` is set) and copies the list, decoding is a copy."""

    __slots__ = ("_max_bytes",)

    def __init__(self, *, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes

    def encode(
        self, messages: Sequence[Message], *, session_id: str, summary: bool = False
    ) -> list[Message]:
        if self._max_bytes is not None:
            check_sizes(messages, self._max_bytes)
        return list(messages)

    def decode(
        self,
        entries: Sequence[Message],
        *,
        on_corrupt: OnCorrupt,
        session_id: str,
        summary: bool = False,
    ) -> tuple[list[Message], int]:
        # The backend's page is a new list already, the caller's own (the messages are shared:
        # they cannot change).
        return entries if type(entries) is list else list(entries), 0

    def encode_doc(self, payload: bytes, *, session_id: str) -> bytes:
        return payload  # immutable: each read parses its own copy

    def decode_doc(self, entry: bytes, *, session_id: str) -> bytes:
        return entry


class EntryCodec:
    """Turns messages into stored entries and back, remembering recent ones.

    A session's history changes by a turn at a time, so most entries a load reads were written or
    read a moment ago. The codec keeps, per session, the entries it last read or wrote there with
    their messages (:mod:`chatstate.stores._windows`), and a load takes the messages of the entries
    it shares with that window, found by comparing bytes (an entry always decodes to the same
    immutable message; an encrypted one only in its own session and place, where the window is
    kept), so it decodes only what it has not seen: about two entries a turn instead of the whole
    window. The cache is bounded by ``cache_bytes``, an estimate of the memory its entries hold;
    the windows of the least recently used sessions go first. It pays while the windows of the
    active sessions fit: the default 32 MiB holds about 22,000 messages of 200 bytes. Loads of
    more than 256 entries bypass it. ``cache_bytes=0`` turns it off (and keeps no plaintext in
    memory beyond what a call returns).
    """

    __slots__ = (
        "_cache",
        "_cache_bytes",
        "_compress",
        "_compress_over",
        "_encryption",
        "_max_bytes",
    )

    def __init__(
        self,
        *,
        compress_over: int | None = None,
        compression: Compression = "auto",
        cache_bytes: int = 32 << 20,
        max_bytes: int | None = None,
        encryption: Encryption | None = None,
    ) -> None:
        self._compress_over = compress_over
        self._compress = _compression.compressor(compression)
        self._max_bytes = max_bytes
        self._encryption = encryption
        self._cache = Windows(cache_bytes)
        self._cache_bytes = cache_bytes

    @classmethod
    def for_store(
        cls,
        *,
        compress_over: int | None,
        compression: Compression,
        message_cache_bytes: int,
        max_message_bytes: int | None,
        encryption: Encryption | None = None,
    ) -> EntryCodec:
        """The codec of a store, from the store's options (named as the stores name them),
        checked: ConfigurationError for one out of range."""
        if compress_over is not None:
            check_count(compress_over, name="compress_over", minimum=0)
        if encryption is not None and not isinstance(encryption, Encryption):
            raise ConfigurationError(
                f"encryption must be a chatstate.Encryption, got {type(encryption).__name__}"
            )
        return cls(
            compress_over=compress_over,
            compression=compression,
            cache_bytes=check_count(message_cache_bytes, name="message_cache_bytes", minimum=0),
            max_bytes=None
            if max_message_bytes is None
            else check_count(max_message_bytes, name="max_message_bytes"),
            encryption=encryption,
        )

    @property
    def encryption(self) -> Encryption | None:
        return self._encryption

    def encode(
        self, messages: Sequence[Message], *, session_id: str = "", summary: bool = False
    ) -> list[bytes]:
        """The entries of ``messages``, which are remembered for the loads that follow. A message
        whose JSON is over ``max_bytes`` raises InvalidMessageError (and nothing is encoded)."""
        compress_over, max_bytes = self._compress_over, self._max_bytes
        # A payload no longer than this is stored as it is (unless it carries a token count).
        small = min(
            _NO_LIMIT if max_bytes is None else max_bytes,
            _NO_LIMIT if compress_over is None else compress_over,
        )
        method, compress = self._compress
        entries = []
        for index, message in enumerate(messages):
            payload = message.__pydantic_serializer__.to_json(message, exclude_defaults=True)
            if len(payload) <= small and getattr(message, "_tokens", None) is None:
                entries.append(_PLAIN_HEADER + payload)  # the common entry, without the calls
                continue
            if max_bytes is not None and len(payload) > max_bytes:
                _check_size(index, len(payload), max_bytes)  # raises
            entries.append(_envelope(payload, compress_over, method, compress, tokens_of(message)))
        encryption = self._encryption
        kind = SUMMARY if summary else HISTORY
        if encryption is not None:
            entries = [encryption.seal(entry, session_id, kind) for entry in entries]
        if self._cache_bytes and entries:
            self._cache.extend((session_id, kind), entries, list(messages))
        return entries

    def decode(
        self,
        entries: Sequence[bytes],
        *,
        on_corrupt: OnCorrupt,
        session_id: str,
        summary: bool = False,
    ) -> tuple[list[Message], int]:
        """The messages of ``entries``, decoding only the entries it does not remember."""
        kind = SUMMARY if summary else HISTORY
        if not self._cache_bytes or not entries or len(entries) > MAX_WINDOW:
            # A load this long (an unbounded history) would only push the windows of other
            # sessions out of the cache, and pay for it on every entry.
            return _kept(self._decode_all(entries, on_corrupt, session_id, kind))
        key = (session_id, kind)
        entries = list(entries)  # the cache's own: the caller's list may change
        span = self._cache.known(key, entries)
        if span is not None and span[1] - span[0] == len(entries):
            # The common load: the session's window, shifted by the turns written since.
            self._cache.keep(key, entries, span[2], span[3])
            return span[2].copy(), 0
        start, stop, known, costs = span or (0, 0, [], [])
        unseen = entries[:start] + entries[stop:]
        decoded = self._decode_all(unseen, on_corrupt, session_id, kind)
        found = decoded[:start] + known + decoded[start:]
        costs = [cost(entry) for entry in entries[:start]] + costs
        costs += [cost(entry) for entry in entries[stop:]]
        kept, skipped = _kept(found)
        if skipped:  # the window holds what was read
            read = [message is not None for message in found]
            entries = list(compress(entries, read))
            costs = list(compress(costs, read))
        self._cache.keep(key, entries, kept.copy(), costs)
        return kept, skipped

    def encode_doc(self, payload: bytes, *, session_id: str) -> bytes:
        """A metadata document's entry: the envelope (compressed as a message would be), sealed
        with encryption (as metadata: it opens in that place of that session only)."""
        method, compress = self._compress
        entry = _envelope(payload, self._compress_over, method, compress, None)
        encryption = self._encryption
        return entry if encryption is None else encryption.seal(entry, session_id, METADATA)

    def decode_doc(self, entry: bytes, *, session_id: str) -> bytes:
        """The JSON of a metadata entry (every stage backwards, as for a message)."""
        encryption = self._encryption
        if entry[:1] == _SEALED:
            if encryption is None:
                raise _no_keys(session_id, entry)
            entry = encryption.open(entry, session_id, METADATA)
        elif encryption is not None:
            raise DecryptionError(
                f"the metadata of session {session_id!r} is not encrypted, in a store that "
                "encrypts: it was not written through these keys",
                session_id=session_id,
            )
        return entry_payload(entry)[0]

    def _decode_all(
        self, entries: Sequence[bytes], on_corrupt: OnCorrupt, session_id: str, kind: bytes
    ) -> list[Message | None]:
        """Every stage backwards: open what is sealed, then read the plain entries."""
        encryption = self._encryption
        if encryption is None:
            for entry in entries:
                if entry[:1] == _SEALED:
                    raise _no_keys(session_id, entry)
            return decode_aligned(entries, on_corrupt=on_corrupt, session_id=session_id)
        # With keys, every entry must open: a plain one may have been forged, so it is refused
        # like a damaged one (but for the messages 0.1.0's EncryptedStore sealed).
        opened = [self._open(entry, session_id, kind, on_corrupt) for entry in entries]
        readable = [entry for entry in opened if entry is not None]
        decoded = iter(decode_aligned(readable, on_corrupt=on_corrupt, session_id=session_id))
        return [None if entry is None else next(decoded) for entry in opened]

    def _open(
        self, entry: bytes, session_id: str, kind: bytes, on_corrupt: OnCorrupt
    ) -> bytes | None:
        """The plain entry sealed in ``entry``; None for one that fails authentication and is
        skipped (``on_tamper="skip"``). A key not given always raises."""
        encryption = self._encryption
        assert encryption is not None
        try:
            if entry[:1] == _SEALED:
                return encryption.open(entry, session_id, kind)
            try:
                message = decode_entry(entry)
            except CorruptEntryError:
                message = None
            if message is None or not _is_legacy(message):
                raise DecryptionError(
                    f"an entry of session {session_id!r} is not encrypted, in a store that "
                    "encrypts: it was not written through these keys",
                    session_id=session_id,
                )
            return encryption.open_legacy(message, session_id, kind)
        except UnknownKeyError:
            raise
        except DecryptionError:
            if on_corrupt == "raise" or encryption.on_tamper == "raise":
                raise
            return None


_NO_LIMIT = 1 << 62
_SEALED = bytes((ENCRYPTED,))


def _no_keys(session_id: str, entry: bytes) -> UnknownKeyError:
    key_id = Encryption.key_id_of(entry)
    return UnknownKeyError(
        f"an entry of session {session_id!r} is encrypted (key {key_id!r}), and this store was "
        "given no keys: give it encryption=Encryption(keys=...)",
        session_id=session_id,
        key_id=key_id,
    )


def _kept(messages: list[Message | None]) -> tuple[list[Message], int]:
    """The messages that were read, and how many were skipped."""
    kept = [message for message in messages if message is not None]
    return kept, len(messages) - len(kept)


def _is_legacy(message: Message) -> bool:
    """Whether ``message`` is one that 0.1.0's EncryptedStore stored in place of a message."""
    content = message.content
    return type(content) is str and content.startswith(LEGACY_PREFIX) and message.role == "user"
