"""Model providers: the protocol, and the providers that ship with chatstate."""

from typing import TYPE_CHECKING, Any

from chatstate.providers.base import Provider, StreamChunk, StreamingProvider
from chatstate.providers.scripted import ScriptedProvider, recall_reply

if TYPE_CHECKING:
    from chatstate.providers.openai import OpenAICompatibleProvider

__all__ = [
    "OpenAICompatibleProvider",
    "Provider",
    "ScriptedProvider",
    "StreamChunk",
    "StreamingProvider",
    "recall_reply",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: it needs the `openai` extra (httpx).
    if name == "OpenAICompatibleProvider":
        from chatstate.providers.openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider
    raise AttributeError(f"module 'chatstate.providers' has no attribute {name!r}")
