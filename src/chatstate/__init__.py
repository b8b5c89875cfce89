"""chatstate: async-first conversation state for LLM applications."""

from chatstate.errors import (
    ChatStateError,
    ConfigurationError,
    CorruptEntryError,
    InvalidInputError,
    InvalidMessageError,
    InvalidSessionIdError,
    PipelineError,
    ProviderError,
    StateLoadError,
    StateSaveError,
    StoreError,
    UnsupportedFormatError,
)
from chatstate.messages import ContentPart, ImagePart, Message, Role, TextPart, ToolCall
from chatstate.middleware import ProviderMiddleware, StateMiddleware, StateMiddlewareConfig
from chatstate.pipeline import CallNext, ExecutionResult, Middleware, Pipeline, RequestContext
from chatstate.providers import Provider, ScriptedProvider
from chatstate.stores import InMemoryStateStore, StateStore

__version__ = "0.1.0"

__all__ = [
    "CallNext",
    "ChatStateError",
    "ConfigurationError",
    "ContentPart",
    "CorruptEntryError",
    "ExecutionResult",
    "ImagePart",
    "InMemoryStateStore",
    "InvalidInputError",
    "InvalidMessageError",
    "InvalidSessionIdError",
    "Message",
    "Middleware",
    "Pipeline",
    "PipelineError",
    "Provider",
    "ProviderError",
    "ProviderMiddleware",
    "RequestContext",
    "Role",
    "ScriptedProvider",
    "StateLoadError",
    "StateMiddleware",
    "StateMiddlewareConfig",
    "StateSaveError",
    "StateStore",
    "StoreError",
    "TextPart",
    "ToolCall",
    "UnsupportedFormatError",
    "__version__",
]
