"""Messages: the immutable :class:`Message` model and its parts.

How a message becomes a stored entry and back is the codec's business
(:mod:`chatstate.stores._codec`); this module knows nothing about storage.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
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
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from chatstate.errors import InvalidMessageError

__all__ = [
    "ContentPart",
    "ImagePart",
    "Message",
    "Role",
    "TextPart",
    "ToolCall",
]

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]

_MAX_COUNT = 0xFFFF_FFFF  # the largest token count a message carries

# A lone surrogate is a str that no UTF-8 (no JSON on the wire, no store) can carry.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(value: str) -> str:
    if not value.isascii() and _SURROGATE.search(value) is not None:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)")
    return value


Text = Annotated[str, AfterValidator(_encodable)]
"""A str that can be written as UTF-8."""


def _freeze(value: Any, depth: int = 1) -> Any:
    """Make a JSON value immutable: dicts become read-only mappings, lists become tuples."""
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, dict | list | tuple):
        if depth > MAX_METADATA_DEPTH:
            # Stored, it could not be read back: JSON parsers stop at a nesting depth.
            raise ValueError(
                f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep (counting the "
                "metadata object), deeper than a stored message can be read back"
            )
        if isinstance(value, dict):
            return MappingProxyType(
                {_encodable(key): _freeze(item, depth + 1) for key, item in value.items()}
            )
        return tuple(_freeze(item, depth + 1) for item in value)
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no infinity or NaN: stored, it would come back as null.
        raise ValueError(f"metadata must be JSON, and {value} is not a JSON number")
    return value


MAX_METADATA_DEPTH = 199
"""How deeply metadata may nest, its own object counted as 1: with the message's object around
it, 200 levels, the most the JSON parser of the stores reads back."""


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


def cached_token_count(message: Message, fingerprint: int) -> int | None:
    """The token count ``message`` carries, if the counter of ``fingerprint`` made it."""
    tokens = tokens_of(message)
    if tokens is None:
        return None
    return tokens & _MAX_COUNT if tokens >> 32 == fingerprint else None


def cache_token_count(message: Message, fingerprint: int, tokens: int) -> None:
    """Keep a count with ``message`` (stored with its entry from then on)."""
    if tokens <= _MAX_COUNT:
        object.__setattr__(message, "_tokens", fingerprint << 32 | tokens)


def tokens_of(message: Message) -> int | None:
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
        raise InvalidMessageError(describe_error(exc)) from exc


def describe_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        if len(loc) > 8:  # a deeply nested value: its path would fill the screen
            loc = [*loc[:3], f"...({len(loc) - 5} more)...", *loc[-2:]]
        where = ".".join(loc)
        problems.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "invalid message: " + "; ".join(problems)
