"""The :class:`Provider` protocol: what a model provider plug-in implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from chatstate.errors import ConfigurationError
from chatstate.messages import Message

__all__ = ["Provider", "StreamChunk", "StreamingProvider", "check_provider"]


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """A piece of a streamed reply: ``text`` as it arrives; a chunk with ``message`` ends a
    message (the provider's last chunk carries the whole reply, with its tool calls, if any).

    Joined, the ``text`` of a reply's chunks is its text. In a streamed turn of the pipeline, the
    chunks of every model call of the turn pass, and a chunk with ``message`` (and no ``text``)
    announces each tool result as the turn adds it.
    """

    text: str
    message: Message | None = None


@runtime_checkable
class Provider(Protocol):
    """A chat model: given the conversation, it returns the assistant's reply.

    Any object with this method fits; ``options`` are passed through from
    ``Pipeline.execute_with_session(..., **options)`` (``temperature``, ``max_tokens``, ...).
    Errors it raises reach the caller as :class:`~chatstate.errors.ProviderError`.
    """

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        """Return the assistant's reply to ``messages`` (oldest first)."""
        ...


@runtime_checkable
class StreamingProvider(Provider, Protocol):
    """A provider that can also write its reply as it goes (optional: the pipeline streams the
    reply of a provider without ``stream`` as one chunk)."""

    def stream(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[StreamChunk]:
        """Yield the reply to ``messages`` as it is written: text chunks, then a last chunk whose
        ``message`` is the whole reply (an async generator fits)."""
        ...


def check_provider(provider: Provider) -> Provider:
    """Return ``provider`` if it has a ``complete`` method, else raise ConfigurationError."""
    if not callable(getattr(provider, "complete", None)):
        raise ConfigurationError(
            f"provider must have an async complete(messages, **options) method; "
            f"{type(provider).__name__} has none"
        )
    return provider
