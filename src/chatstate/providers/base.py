"""The :class:`Provider` protocol: what a model provider plug-in implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from chatstate.errors import ConfigurationError
from chatstate.messages import Message

__all__ = ["Provider", "check_provider"]


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


def check_provider(provider: Provider) -> Provider:
    """Return ``provider`` if it has a ``complete`` method, else raise ConfigurationError."""
    if not callable(getattr(provider, "complete", None)):
        raise ConfigurationError(
            f"provider must have an async complete(messages, **options) method; "
            f"{type(provider).__name__} has none"
        )
    return provider
