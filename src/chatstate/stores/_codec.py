"""The codec: how messages become stored entries and back, in stages.

A stored entry is a small versioned envelope around the message's JSON::

    byte 0     format version (1 or 2)
    byte 1     low 4 bits: codec (0 = JSON); high 4 bits: compression (0 = none, 1 = zlib,
               2 = zstd)
    bytes 2-7  version 2 only: the message's token count, as a 16-bit fingerprint of the counter
               that made it and a 32-bit count (big-endian; see :mod:`chatstate.tokens`)
    then       the payload

Version 2 is written only for a message that carries a token count (with a token budget on);
everything else is written as version 1, which every release reads. Readers accept every version
up to their own and raise :class:`UnsupportedFormatError` for newer ones, so history written today
stays readable after an upgrade, and an old reader never guesses at a format it does not know.

:class:`EntryCodec` is the codec of the stores that serialise (SQLite, Redis); :class:`ObjectCodec`
that of the in-memory store, which keeps the immutable messages themselves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Literal, Protocol, TypeVar

from pydantic import TypeAdapter, ValidationError

from chatstate import _compression
from chatstate._checks import check_count
from chatstate._compression import Compression
from chatstate.errors import CorruptEntryError, InvalidMessageError, UnsupportedFormatError
from chatstate.messages import Message, describe_error, tokens_of

__all__ = [
    "DEFAULT_COMPRESS_OVER",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FORMAT_VERSION",
    "Codec",
    "EntryCodec",
    "ObjectCodec",
    "decode_entries",
    "decode_entry",
    "encode_entry",
]

E = TypeVar("E")

FORMAT_VERSION = 2
"""The newest entry format this version reads (it writes 2 only for counted messages)."""

_CODEC_JSON = 0
_COUNTED = 2  # the version of entries with a token count
_COUNT_END = 8  # where the payload of a counted entry starts


def _header(compression: int, tokens: int | None = None) -> bytes:
    if tokens is None:
        return bytes((1, _CODEC_JSON | compression << 4))
    return bytes((_COUNTED, _CODEC_JSON | compression << 4)) + tokens.to_bytes(6, "big")


_PLAIN_HEADER = _header(_compression.NONE)
_PLAIN_COUNTED = bytes((_COUNTED, _CODEC_JSON))


_MESSAGE_LIST: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


class Codec(Protocol[E]):
    """Turns messages into a backend's entries and back."""

    def encode(self, messages: Sequence[Message]) -> list[E]:
        """The entries of ``messages``; InvalidMessageError (and nothing encoded) for one that
        cannot be stored."""
        ...

    def decode(
        self, entries: Sequence[E], *, on_corrupt: Literal["skip", "raise"], session_id: str
    ) -> tuple[list[Message], int]:
        """The messages of ``entries`` and how many were skipped as corrupt (``"skip"``), or
        CorruptEntryError (``"raise"``)."""
        ...


class ObjectCodec:
    """The codec of a backend that keeps the messages themselves (they are immutable): encoding
    checks their size (when ``max_bytes`` is set) and copies the list, decoding is a copy."""

    __slots__ = ("_max_bytes",)

    def __init__(self, *, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes

    def encode(self, messages: Sequence[Message]) -> list[Message]:
        check_sizes(messages, self._max_bytes)
        return list(messages)

    def decode(
        self, entries: Sequence[Message], *, on_corrupt: Literal["skip", "raise"], session_id: str
    ) -> tuple[list[Message], int]:
        # The backend's page is a new list already, the caller's own (the messages are shared:
        # they cannot change).
        return entries if type(entries) is list else list(entries), 0


def encode_entry(
    message: Message, *, compress_over: int | None = None, compression: Compression = "auto"
) -> bytes:
    """Serialise a message into a stored entry.

    With ``compress_over`` set, a payload longer than that many bytes is compressed (``"zlib"``,
    ``"zstd"`` with the zstandard package, or ``"auto"``: zstd if it is installed, else zlib) when
    that makes it smaller.
    """
    return _envelope(
        _json(message), compress_over, *_compression.compressor(compression), tokens_of(message)
    )


def _json(message: Message) -> bytes:
    return message.__pydantic_serializer__.to_json(message, exclude_defaults=True)


def _envelope(
    payload: bytes,
    compress_over: int | None,
    kind: int,
    compress: Callable[[bytes], bytes],
    tokens: int | None,
) -> bytes:
    if compress_over is not None and len(payload) > compress_over:
        packed = compress(payload)
        if len(packed) < len(payload):
            return _header(kind, tokens) + packed
    if tokens is None:
        return _PLAIN_HEADER + payload
    return _header(_compression.NONE, tokens) + payload


def check_sizes(messages: Sequence[Message], max_bytes: int | None) -> None:
    """Raise InvalidMessageError if a message's JSON is longer than ``max_bytes`` (None: no
    limit); for stores that keep messages as objects (a serialising store checks as it encodes)."""
    if max_bytes is not None:
        for index, message in enumerate(messages):
            _check_size(index, len(_json(message)), max_bytes)


def _check_size(index: int, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidMessageError(
            f"messages[{index}] is {size:,} bytes as JSON; the limit is {max_bytes:,} "
            "(max_message_bytes); nothing was stored"
        )


def decode_entry(entry: bytes) -> Message:
    """Parse a stored entry back into a message.

    Raises :class:`UnsupportedFormatError` for an entry of a newer format and
    :class:`CorruptEntryError` for one that is damaged.
    """
    if len(entry) < 2:
        raise CorruptEntryError(f"stored entry is too short ({len(entry)} bytes)")
    version, flags = entry[0], entry[1]
    if version == 1:
        start, tokens = 2, None
    elif version == _COUNTED:
        if len(entry) < _COUNT_END:
            raise CorruptEntryError(f"stored entry is too short ({len(entry)} bytes)")
        start, tokens = _COUNT_END, int.from_bytes(entry[2:_COUNT_END])
    elif version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"stored entry has format version {version}; this chatstate reads up to "
            f"{FORMAT_VERSION} (upgrade chatstate to read it)"
        )
    else:
        raise CorruptEntryError(f"stored entry has an invalid format version {version}")
    codec, compression = flags & 0x0F, flags >> 4
    if codec != _CODEC_JSON:
        raise UnsupportedFormatError(f"stored entry uses unknown codec {codec}")
    payload = entry[start:]
    if compression != _compression.NONE:
        payload = _compression.decompress(compression, payload)
    try:
        message = Message.model_validate_json(payload)
    except ValidationError as exc:
        raise CorruptEntryError(
            f"stored entry is not a valid message: {describe_error(exc)}"
        ) from exc
    if tokens is not None:
        object.__setattr__(message, "_tokens", tokens)
    return message


def decode_entries(
    entries: Sequence[bytes],
    *,
    on_corrupt: Literal["skip", "raise"],
    session_id: str,
) -> tuple[list[Message], int]:
    """Decode stored entries, oldest first; returns the messages and how many were skipped."""
    if entries:
        # The common case, every entry plain JSON: one call into pydantic-core for all of them
        # rather than one per entry (about half the cost). Valid entries joined with commas are
        # exactly the array of them; anything else fails validation or yields a different count
        # (short of entries crafted together, by someone who could as well write valid ones),
        # and is then decoded entry by entry below, so one bad entry never costs the rest.
        counts: list[int | None] | None = None
        if all(map(bytes.startswith, entries, repeat(_PLAIN_HEADER, len(entries)))):
            payloads = [entry[2:] for entry in entries]
        else:
            payloads, counts = _plain_counted(entries)
        if payloads:
            try:
                messages = _MESSAGE_LIST.validate_json(b"[" + b",".join(payloads) + b"]")
            except ValidationError:
                pass
            else:
                if len(messages) == len(entries):
                    if counts is not None:
                        for message, tokens in zip(messages, counts, strict=True):
                            if tokens is not None:
                                object.__setattr__(message, "_tokens", tokens)
                    return messages, 0
    result: list[Message] = []
    skipped = 0
    for entry in entries:
        try:
            result.append(decode_entry(entry))
        except CorruptEntryError as exc:
            if on_corrupt == "raise":
                exc.session_id = session_id
                raise
            skipped += 1
    return result, skipped


def _plain_counted(entries: Sequence[bytes]) -> tuple[list[bytes], list[int | None]]:
    """The payloads and token counts of entries that are all plain JSON, of either version
    (nothing if any is not)."""
    payloads: list[bytes] = []
    counts: list[int | None] = []
    for entry in entries:
        if entry.startswith(_PLAIN_COUNTED) and len(entry) >= _COUNT_END:
            payloads.append(entry[_COUNT_END:])
            counts.append(int.from_bytes(entry[2:_COUNT_END]))
        elif entry.startswith(_PLAIN_HEADER):
            payloads.append(entry[2:])
            counts.append(None)
        else:
            return [], []
    return payloads, counts


_MAX_CACHED_LOAD = 256
"""Loads of more entries than this bypass the codec's cache."""


DEFAULT_COMPRESS_OVER = 1024
"""Entries whose JSON is longer are compressed by default (1 KiB), by the stores that serialise."""

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""The largest message (its JSON) a serialising store takes by default: 1 MiB."""


class EntryCodec:
    """Turns messages into stored entries and back, remembering recent ones.

    A session's history changes by a turn at a time, so most entries a load reads were written or
    read a moment ago. The codec keeps the messages of the entries it encoded or decoded lately,
    keyed by the entry's exact bytes (an entry always decodes to the same immutable message), so a
    load decodes only what it has not seen: about two entries a turn instead of the whole window.
    The cache is bounded by ``cache_bytes``, an estimate of the memory its entries hold (their
    bytes and messages); the least recently used go first, so entries trimmed out of every window
    leave before live ones. It pays while the windows of the active sessions fit: the default
    32 MiB holds about 22,000 messages of 200 bytes. Loads of more than 256 entries bypass it.
    ``cache_bytes=0`` turns it off.
    """

    __slots__ = ("_cache", "_cache_bytes", "_compress", "_compress_over", "_held", "_max_bytes")

    def __init__(
        self,
        *,
        compress_over: int | None = None,
        compression: Compression = "auto",
        cache_bytes: int = 32 << 20,
        max_bytes: int | None = None,
    ) -> None:
        self._compress_over = compress_over
        self._compress = _compression.compressor(compression)
        self._max_bytes = max_bytes
        self._cache: OrderedDict[bytes, Message] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._held = 0

    @classmethod
    def for_store(
        cls,
        *,
        compress_over: int | None,
        compression: Compression,
        message_cache_bytes: int,
        max_message_bytes: int | None,
    ) -> EntryCodec:
        """The codec of a store, from the store's options (named as the stores name them),
        checked: ConfigurationError for one out of range."""
        if compress_over is not None:
            check_count(compress_over, name="compress_over", minimum=0)
        return cls(
            compress_over=compress_over,
            compression=compression,
            cache_bytes=check_count(message_cache_bytes, name="message_cache_bytes", minimum=0),
            max_bytes=None
            if max_message_bytes is None
            else check_count(max_message_bytes, name="max_message_bytes"),
        )

    def encode(self, messages: Sequence[Message]) -> list[bytes]:
        """The entries of ``messages``, which are remembered for the loads that follow. A message
        whose JSON is over ``max_bytes`` raises InvalidMessageError (and nothing is encoded)."""
        compress_over, max_bytes = self._compress_over, self._max_bytes
        entries = []
        for index, message in enumerate(messages):
            payload = _json(message)
            if max_bytes is not None:
                _check_size(index, len(payload), max_bytes)
            entries.append(_envelope(payload, compress_over, *self._compress, tokens_of(message)))
        if self._cache_bytes:
            for entry, message in zip(entries, messages, strict=True):
                self._remember(entry, message)
        return entries

    def decode(
        self, entries: Sequence[bytes], *, on_corrupt: Literal["skip", "raise"], session_id: str
    ) -> tuple[list[Message], int]:
        """Like :func:`decode_entries`, decoding only the entries it does not remember."""
        if not self._cache_bytes or len(entries) > _MAX_CACHED_LOAD:
            # A load this long (an unbounded history) would only push the windows of other
            # sessions out of the cache, and pay for it on every entry.
            return decode_entries(entries, on_corrupt=on_corrupt, session_id=session_id)
        cache = self._cache
        get, keep = cache.get, cache.move_to_end
        found: list[Message | None] = []
        missing: list[int] = []
        for entry in entries:
            message = get(entry)
            if message is None:
                missing.append(len(found))
            else:
                keep(entry)  # least recently used first out: live windows stay, trimmed go
            found.append(message)
        if not missing:
            return found, 0  # type: ignore[return-value]  # no None left
        unseen = [entries[index] for index in missing]
        decoded, skipped = decode_entries(unseen, on_corrupt=on_corrupt, session_id=session_id)
        if skipped:  # which ones? decode them one by one
            decoded = []
            for index, entry in zip(missing, unseen, strict=True):
                try:
                    found[index] = decode_entry(entry)
                except CorruptEntryError:
                    continue
                self._remember(entry, found[index])  # type: ignore[arg-type]
            return [message for message in found if message is not None], skipped
        for index, entry, message in zip(missing, unseen, decoded, strict=True):
            found[index] = message
            self._remember(entry, message)
        return found, 0  # type: ignore[return-value]

    def _remember(self, entry: bytes, message: Message) -> None:
        cache = self._cache
        if entry in cache:
            return
        cache[entry] = message
        self._held += _cost(entry)
        while self._held > self._cache_bytes and cache:
            oldest, _ = cache.popitem(last=False)
            self._held -= _cost(oldest)


def _cost(entry: bytes) -> int:
    """Estimated bytes that remembering an entry holds: the entry, its message (whose text is
    about the size of a plain entry's JSON, and several times a compressed one's), and about
    1 KiB of objects around them (measured: 0.9 KiB for a short text message)."""
    return len(entry) * (2 if entry[1:2] == _PLAIN_HEADER[1:] else 5) + 1024
