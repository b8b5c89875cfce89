"""Messages, and the one place where they become stored entries and back.

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
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from chatstate import _compression
from chatstate._checks import check_count
from chatstate._compression import Compression
from chatstate.errors import CorruptEntryError, InvalidMessageError, UnsupportedFormatError

__all__ = [
    "FORMAT_VERSION",
    "ContentPart",
    "ImagePart",
    "Message",
    "Role",
    "TextPart",
    "ToolCall",
    "decode_entry",
    "encode_entry",
]

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]

FORMAT_VERSION = 2
"""The newest entry format this version reads (it writes 2 only for counted messages)."""

_CODEC_JSON = 0
_COUNTED = 2  # the version of entries with a token count
_COUNT_END = 8  # where the payload of a counted entry starts
_MAX_COUNT = 0xFFFF_FFFF


def _header(compression: int, tokens: int | None = None) -> bytes:
    if tokens is None:
        return bytes((1, _CODEC_JSON | compression << 4))
    return bytes((_COUNTED, _CODEC_JSON | compression << 4)) + tokens.to_bytes(6, "big")


_PLAIN_HEADER = _header(_compression.NONE)
_PLAIN_COUNTED = bytes((_COUNTED, _CODEC_JSON))


# A lone surrogate is a str that no UTF-8 (no JSON on the wire, no store) can carry.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(value: str) -> str:
    if not value.isascii() and _SURROGATE.search(value) is not None:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)")
    return value


Text = Annotated[str, AfterValidator(_encodable)]
"""A str that can be written as UTF-8."""


def _freeze(value: Any) -> Any:
    """Make a JSON value immutable: dicts become read-only mappings, lists become tuples."""
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, dict):
        return MappingProxyType({_encodable(key): _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no infinity or NaN: stored, it would come back as null.
        raise ValueError(f"metadata must be JSON, and {value} is not a JSON number")
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _freeze_metadata(value: Mapping[str, JsonValue]) -> Mapping[str, JsonValue]:
    return _EMPTY_METADATA if not value else _freeze(value)


_EMPTY_METADATA: Mapping[str, JsonValue] = MappingProxyType({})

# Frozen so that a message shared between the caller and the in-memory store can never change
# underneath either of them; this is what lets stores hand out messages without deep copies.
Metadata = Annotated[
    Mapping[str, JsonValue],
    AfterValidator(_freeze_metadata),
    PlainSerializer(_thaw, return_type=dict[str, JsonValue]),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class _Part(_Frozen):
    @model_serializer(mode="wrap")
    def _keep_type(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The discriminator must survive exclude_defaults, or a stored part cannot be read back.
        data: dict[str, Any] = handler(self)
        data["type"] = self.type  # type: ignore[attr-defined]
        return data


class TextPart(_Part):
    """A piece of text content."""

    type: Literal["text"] = "text"
    text: Text


class ImagePart(_Part):
    """An image, by URL (``https:`` or a ``data:`` URL)."""

    type: Literal["image_url"] = "image_url"
    url: Text
    detail: Literal["auto", "low", "high"] | None = None


ContentPart: TypeAlias = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ToolCall(_Frozen):
    """A call of a tool that an assistant message asks for.

    ``arguments`` is JSON text, kept exactly as given so that it round-trips byte for byte; a dict
    is accepted too and written as compact JSON. :attr:`args` parses it.
    """

    id: Text = Field(min_length=1)
    """Links the call to the ``tool`` message that carries its result (``tool_call_id``)."""
    name: Text = Field(min_length=1)
    """The name of the tool."""
    arguments: Text = "{}"
    """The arguments, as JSON text."""

    @field_validator("arguments", mode="before")
    @classmethod
    def _dump_arguments(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return value

    @field_validator("arguments")
    @classmethod
    def _check_arguments(cls, value: str) -> str:
        try:
            json.loads(value)
        except ValueError as exc:
            raise ValueError(f"tool call arguments must be JSON text: {exc}") from None
        return value

    @property
    def args(self) -> Any:
        """The arguments, parsed."""
        return json.loads(self.arguments)


class Message(_Frozen):
    """One message of a conversation. Immutable; equal when every field is equal.

    ``content`` is text, or a sequence of parts (text and images). An assistant message that only
    calls tools may have no content; a ``tool`` message answers the call named by ``tool_call_id``.
    """

    role: Role
    """Who wrote it: ``system``, ``user``, ``assistant`` or ``tool``."""
    content: str | tuple[ContentPart, ...] | None = None
    """Text, or parts; ``None`` only for an assistant message that calls tools."""
    name: str | None = None
    """An optional name of the author (a user name, a tool name)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The tools an assistant message calls."""
    tool_call_id: str | None = None
    """For a ``tool`` message: the id of the call it answers."""
    metadata: Metadata = Field(default_factory=lambda: _EMPTY_METADATA)
    """Application data kept with the message (JSON values, read-only); never sent to a provider
    by the built-in middlewares."""

    # Not a field: the token count of the message (see chatstate.tokens), once a counter made
    # it, as its 16-bit fingerprint << 32 | the count. A cache of a pure function of the fields,
    # so it takes no part in equality, copies or serialisation.
    __slots__ = ("_tokens",)

    @model_validator(mode="after")
    def _check_roles(self) -> Message:
        # Runs for every message built or loaded: the common case (no tool calls) returns early.
        # The str fields are checked for lone surrogates here, not by a validator of their own:
        # one Python call per message instead of one per field.
        object.__setattr__(self, "_tokens", None)  # no count yet; reading a set slot is cheap
        content = self.content
        if type(content) is str and not content.isascii():
            _encodable(content)
        if self.name is not None:
            _encodable(self.name)
        if self.tool_call_id is None and not self.tool_calls:
            if self.role == "tool":
                raise ValueError("a tool message needs the tool_call_id of the call it answers")
            if self.content is None:
                raise ValueError(f"a {self.role} message needs content")
            return self
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages can have tool_calls")
        if self.tool_call_id is not None:
            _encodable(self.tool_call_id)
        if self.role == "tool":
            if not self.tool_call_id:
                raise ValueError("a tool message needs the tool_call_id of the call it answers")
        elif self.tool_call_id is not None:
            raise ValueError("only tool messages can have a tool_call_id")
        if len(self.tool_calls) > 1 and len({call.id for call in self.tool_calls}) != len(
            self.tool_calls
        ):
            raise ValueError("tool call ids must be unique within a message")
        return self

    @property
    def text(self) -> str:
        """The text of the message: the content, or its text parts joined; ``""`` if none."""
        content = self.content
        if isinstance(content, str):
            return content
        if not content:
            return ""
        return "".join(part.text for part in content if isinstance(part, TextPart))


_MESSAGE_LIST: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


def cached_token_count(message: Message, fingerprint: int) -> int | None:
    """The token count ``message`` carries, if the counter of ``fingerprint`` made it."""
    tokens = _tokens_of(message)
    if tokens is None:
        return None
    return tokens & _MAX_COUNT if tokens >> 32 == fingerprint else None


def cache_token_count(message: Message, fingerprint: int, tokens: int) -> None:
    """Keep a count with ``message`` (stored with its entry from then on)."""
    if tokens <= _MAX_COUNT:
        object.__setattr__(message, "_tokens", fingerprint << 32 | tokens)


def _tokens_of(message: Message) -> int | None:
    try:
        tokens: int | None = message._tokens  # type: ignore[attr-defined]  # the slot
    except AttributeError:  # a copy (model_copy), which validation did not see
        return None
    return tokens


def as_messages(messages: Iterable[Message]) -> list[Message]:
    """Check that ``messages`` is a sequence of :class:`Message` and return it as a new list."""
    kind = type(messages)
    if kind is list or kind is tuple:  # the common case, without the slower ABC checks
        result = list(messages)
        for item in result:
            if type(item) is not Message:
                break
        else:
            return result
    elif isinstance(messages, str | bytes | Message | Mapping) or not isinstance(
        messages, Iterable
    ):
        raise InvalidMessageError(
            f"expected a sequence of chatstate.Message, got {type(messages).__name__}"
        )
    result = list(messages)
    for index, item in enumerate(result):
        if not isinstance(item, Message):
            raise InvalidMessageError(
                f"messages[{index}] is a {type(item).__name__}, not a chatstate.Message"
            )
    return result


def make_message(role: object, content: object, **fields: Any) -> Message:
    """Build a message from loose input, turning pydantic's error into InvalidMessageError."""
    try:
        return Message(role=role, content=content, **fields)
    except ValidationError as exc:
        raise InvalidMessageError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        if len(loc) > 8:  # a deeply nested value: its path would fill the screen
            loc = [*loc[:3], f"...({len(loc) - 5} more)...", *loc[-2:]]
        where = ".".join(loc)
        problems.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "invalid message: " + "; ".join(problems)


def encode_entry(
    message: Message, *, compress_over: int | None = None, compression: Compression = "auto"
) -> bytes:
    """Serialise a message into a stored entry.

    With ``compress_over`` set, a payload longer than that many bytes is compressed (``"zlib"``,
    ``"zstd"`` with the zstandard package, or ``"auto"``: zstd if it is installed, else zlib) when
    that makes it smaller.
    """
    return _envelope(
        _json(message), compress_over, *_compression.compressor(compression), _tokens_of(message)
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
        raise CorruptEntryError(f"stored entry is not a valid message: {_describe(exc)}") from exc
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
            entries.append(_envelope(payload, compress_over, *self._compress, _tokens_of(message)))
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
