"""The stored entry: the envelope around a message's JSON, and the functions that write and
read it.

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
Format 3 is an encrypted entry (:mod:`chatstate.stores._encryption`): the plain entry of format 1
or 2, sealed; the codec (:mod:`chatstate.stores._codec`) opens it before these functions read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from chatstate import _compression
from chatstate._compression import Compression
from chatstate.errors import CorruptEntryError, InvalidMessageError, UnsupportedFormatError
from chatstate.messages import Message, describe_error, tokens_of

__all__ = [
    "DEFAULT_COMPRESS_OVER",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FORMAT_VERSION",
    "check_sizes",
    "decode_aligned",
    "decode_entries",
    "decode_entry",
    "encode_entry",
    "entry_payload",
]

FORMAT_VERSION = 3
"""The newest entry format this version reads (it writes 2 only for counted messages, 3 only
encrypted)."""

ENCRYPTED = 3  # the version of an encrypted entry (see chatstate.stores._encryption)
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
    payload, tokens = entry_payload(entry)
    try:
        message = Message.model_validate_json(payload)
    except ValidationError as exc:
        raise CorruptEntryError(
            f"stored entry is not a valid message: {describe_error(exc)}"
        ) from exc
    if tokens is not None:
        object.__setattr__(message, "_tokens", tokens)
    return message


def entry_payload(entry: bytes) -> tuple[bytes, int | None]:
    """The payload of a plain stored entry (decompressed) and its token count (None: none);
    the errors of :func:`decode_entry`."""
    if len(entry) < 2:
        raise CorruptEntryError(f"stored entry is too short ({len(entry)} bytes)")
    version, flags = entry[0], entry[1]
    if version == 1:
        start, tokens = 2, None
    elif version == _COUNTED:
        if len(entry) < _COUNT_END:
            raise CorruptEntryError(f"stored entry is too short ({len(entry)} bytes)")
        start, tokens = _COUNT_END, int.from_bytes(entry[2:_COUNT_END])
    elif version == ENCRYPTED:
        raise UnsupportedFormatError(
            "stored entry is encrypted: read it through a store given its keys (encryption=)"
        )
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
    return payload, tokens


def decode_entries(
    entries: Sequence[bytes],
    *,
    on_corrupt: Literal["skip", "raise"],
    session_id: str,
) -> tuple[list[Message], int]:
    """Decode stored entries, oldest first; returns the messages and how many were skipped."""
    decoded = decode_aligned(entries, on_corrupt=on_corrupt, session_id=session_id)
    messages = [message for message in decoded if message is not None]
    return messages, len(decoded) - len(messages)


def decode_aligned(
    entries: Sequence[bytes],
    *,
    on_corrupt: Literal["skip", "raise"],
    session_id: str,
) -> list[Message | None]:
    """The message of each entry, in place, None where one is corrupt and ``on_corrupt`` is
    ``"skip"``."""
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
                    return messages  # type: ignore[return-value]  # list is invariant
    result: list[Message | None] = []
    for entry in entries:
        try:
            result.append(decode_entry(entry))
        except CorruptEntryError as exc:
            if on_corrupt == "raise":
                exc.session_id = session_id
                raise
            result.append(None)
    return result


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


DEFAULT_COMPRESS_OVER = 1024
"""Entries whose JSON is longer are compressed by default (1 KiB), by the stores that serialise."""

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""The largest message (its JSON) a serialising store takes by default: 1 MiB."""
