"""Token counting: what a token budget measures a window with.

A :class:`TokenCounter` tells how many tokens a message costs in a request. The default,
:data:`ESTIMATE`, needs no network and no model download: it estimates text at about four
characters a token for ASCII and more for other scripts (see :func:`estimate_tokens`), plus a
fixed cost per message, tool call and image. It is an estimate, meant to err on the high side;
plug in a real tokenizer where the budget must be exact::

    import tiktoken
    encoding = tiktoken.get_encoding("o200k_base")
    counter = TextTokenCounter(lambda text: len(encoding.encode(text)), name="tiktoken/o200k_base")

Counts are computed once per message: the state middleware counts a turn's messages when it stores
them, the stores keep the count with the entry (with a fingerprint of the counter's ``name``), and
a load hands it back with the message; a message counted by another counter is counted again,
once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from chatstate.errors import ConfigurationError
from chatstate.messages import Message, TextPart, cache_token_count, cached_token_count

__all__ = [
    "ESTIMATE",
    "TextTokenCounter",
    "TokenCounter",
    "count_tokens",
    "estimate_tokens",
]


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens a message costs in a request to a model.

    ``name`` identifies the counting (the tokenizer and its rules): counts stored with a message
    are reused only by a counter of the same name, so give a counter that counts differently a
    different name.
    """

    @property
    def name(self) -> str: ...

    def count(self, message: Message) -> int:
        """The tokens ``message`` costs, its text and the overhead of its role and parts."""
        ...


def estimate_tokens(text: str) -> int:
    """An offline estimate of the tokens of ``text``: a quarter of its characters, plus half a
    token for every UTF-8 byte past the first of a character.

    English comes out at the usual four characters a token; Chinese or Japanese at about 1.25
    tokens a character, Cyrillic or Greek at 0.75, emoji at 1.75; all a little above what common
    tokenizers count, so a budget set by it is rarely overrun.
    """
    if text.isascii():
        return (len(text) + 3) // 4
    chars = len(text)
    extra = len(text.encode("utf-8", "surrogatepass")) - chars
    return (chars + 2 * extra + 3) // 4


class TextTokenCounter:
    """A :class:`TokenCounter` made from a function that counts the tokens of a text.

    A message costs ``per_message`` tokens (its role and separators, as chat APIs frame it), plus
    its text, plus for each tool call ``per_tool_call`` and its name and arguments, plus
    ``per_image`` for an image part (``per_low_detail_image`` for one with ``detail="low"``). The
    defaults follow OpenAI's published accounting (an image at high detail costs 765 tokens at
    1024x1024 pixels; at low detail 85).
    """

    __slots__ = (
        "_count_text",
        "name",
        "per_image",
        "per_low_detail_image",
        "per_message",
        "per_tool_call",
    )

    def __init__(
        self,
        count_text: Callable[[str], int],
        *,
        name: str,
        per_message: int = 4,
        per_tool_call: int = 4,
        per_image: int = 765,
        per_low_detail_image: int = 85,
    ) -> None:
        if not callable(count_text):
            raise ConfigurationError("count_text must be a function of a str, returning an int")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty str, got {name!r}")
        for option, value in (
            ("per_message", per_message),
            ("per_tool_call", per_tool_call),
            ("per_image", per_image),
            ("per_low_detail_image", per_low_detail_image),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{option} must be an int >= 0, got {value!r}")
        self._count_text = count_text
        self.name = name
        self.per_message = per_message
        self.per_tool_call = per_tool_call
        self.per_image = per_image
        self.per_low_detail_image = per_low_detail_image

    def __repr__(self) -> str:
        return f"TextTokenCounter(name={self.name!r})"

    def count(self, message: Message) -> int:
        count_text = self._count_text
        tokens = self.per_message
        content = message.content
        if isinstance(content, str):
            tokens += count_text(content)
        elif content:
            for part in content:
                if isinstance(part, TextPart):
                    tokens += count_text(part.text)
                elif part.detail == "low":
                    tokens += self.per_low_detail_image
                else:
                    tokens += self.per_image
        if message.name is not None:
            tokens += 1 + count_text(message.name)
        for call in message.tool_calls:
            tokens += self.per_tool_call + count_text(call.name) + count_text(call.arguments)
        return tokens


ESTIMATE = TextTokenCounter(estimate_tokens, name="chatstate/estimate-1")
"""The default counter: :func:`estimate_tokens` with the default overheads."""


def fingerprint(counter: TokenCounter) -> int:
    """The 16-bit fingerprint of a counter's name that a stored count carries."""
    name = counter.name
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"a token counter needs a non-empty str name, {type(counter).__name__} has {name!r}"
        )
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) & 0xFFFF


class Tally:
    """A counter and its fingerprint: counts messages, once each (see :func:`count_tokens`)."""

    __slots__ = ("counter", "fingerprint")

    def __init__(self, counter: TokenCounter) -> None:
        if not callable(getattr(counter, "count", None)):
            raise ConfigurationError(
                f"token_counter must have a count(message) method; {type(counter).__name__} "
                "has none"
            )
        self.counter = counter
        self.fingerprint = fingerprint(counter)

    def __call__(self, message: Message) -> int:
        """The tokens of ``message``: the count it carries, if this counter made it; else
        counted now, and kept with the message (which the stores then keep with its entry)."""
        known = cached_token_count(message, self.fingerprint)
        if known is not None:
            return known
        tokens = self.counter.count(message)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ConfigurationError(
                f"{type(self.counter).__name__}.count returned {tokens!r}, not an int >= 0"
            )
        cache_token_count(message, self.fingerprint, tokens)
        return tokens

    def total(self, messages: Sequence[Message]) -> int:
        return sum(map(self, messages))


def count_tokens(messages: Message | Sequence[Message], counter: TokenCounter = ESTIMATE) -> int:
    """The tokens of a message, or of several, by ``counter`` (counted once per message)."""
    tally = Tally(counter)
    if isinstance(messages, Message):
        return tally(messages)
    return tally.total(messages)
