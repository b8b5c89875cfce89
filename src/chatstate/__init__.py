"""chatstate: async-first conversation state for LLM applications.

The core is here: messages, stores (``open_store(url)`` or a store's class), the pipeline and its
middlewares, providers, errors. Monitoring (metrics, store events, alerts) is in
:mod:`chatstate.monitoring`; exporters with their extras (:mod:`chatstate.prometheus`,
:mod:`chatstate.otel`); the conformance suite and test servers in :mod:`chatstate.testing`.
"""

from typing import TYPE_CHECKING, Any

from chatstate.errors import (
    ChatStateError,
    ConfigurationError,
    CorruptEntryError,
    DecryptionError,
    InvalidInputError,
    InvalidMessageError,
    InvalidMetadataError,
    InvalidSessionIdError,
    LeaseLostError,
    LeaseTimeoutError,
    MessageNotFoundError,
    OutcomeUnknownError,
    PipelineError,
    ProviderError,
    SessionExistsError,
    SessionNotFoundError,
    StateLoadError,
    StateSaveError,
    StoreError,
    ToolExchangeError,
    ToolRoundsError,
    UnknownKeyError,
    UnsupportedFormatError,
    VersionConflictError,
    WrongTypeError,
)
from chatstate.messages import ContentPart, ImagePart, Message, Role, TextPart, ToolCall
from chatstate.middleware import ProviderMiddleware, StateMiddleware, StateMiddlewareConfig
from chatstate.pipeline import (
    CallNext,
    ChunkFilter,
    ExecutionResult,
    Middleware,
    Pipeline,
    RequestContext,
)
from chatstate.providers import Provider, ScriptedProvider, StreamChunk, StreamingProvider
from chatstate.retry import RetryPolicy
from chatstate.stores import (
    Encryption,
    HistoryPage,
    InMemoryStateStore,
    NearCache,
    SessionInfo,
    SQLiteStateStore,
    StateStore,
    StoredMessage,
)
from chatstate.stores.urls import open_store
from chatstate.streaming import StreamedTurn
from chatstate.summaries import ProviderSummarizer, Summarizer, SummaryConfig
from chatstate.tokens import TextTokenCounter, TokenCounter
from chatstate.tools import Tool, tool
from chatstate.transfer import ImportReport, export_sessions, fork_session, import_sessions

if TYPE_CHECKING:
    from chatstate.providers.openai import OpenAICompatibleProvider
    from chatstate.stores.redis import RedisStateStore

__version__ = "0.1.0"

__all__ = [
    "CallNext",
    "ChatStateError",
    "ChunkFilter",
    "ConfigurationError",
    "ContentPart",
    "CorruptEntryError",
    "DecryptionError",
    "Encryption",
    "ExecutionResult",
    "HistoryPage",
    "ImagePart",
    "ImportReport",
    "InMemoryStateStore",
    "InvalidInputError",
    "InvalidMessageError",
    "InvalidMetadataError",
    "InvalidSessionIdError",
    "LeaseLostError",
    "LeaseTimeoutError",
    "Message",
    "MessageNotFoundError",
    "Middleware",
    "NearCache",
    "OpenAICompatibleProvider",
    "OutcomeUnknownError",
    "Pipeline",
    "PipelineError",
    "Provider",
    "ProviderError",
    "ProviderMiddleware",
    "ProviderSummarizer",
    "RedisStateStore",
    "RequestContext",
    "RetryPolicy",
    "Role",
    "SQLiteStateStore",
    "ScriptedProvider",
    "SessionExistsError",
    "SessionInfo",
    "SessionNotFoundError",
    "StateLoadError",
    "StateMiddleware",
    "StateMiddlewareConfig",
    "StateSaveError",
    "StateStore",
    "StoreError",
    "StoredMessage",
    "StreamChunk",
    "StreamedTurn",
    "StreamingProvider",
    "Summarizer",
    "SummaryConfig",
    "TextPart",
    "TextTokenCounter",
    "TokenCounter",
    "Tool",
    "ToolCall",
    "ToolExchangeError",
    "ToolRoundsError",
    "UnknownKeyError",
    "UnsupportedFormatError",
    "VersionConflictError",
    "WrongTypeError",
    "__version__",
    "export_sessions",
    "fork_session",
    "import_sessions",
    "open_store",
    "tool",
]


def __getattr__(name: str) -> Any:
    # The Redis store is imported on first use: it needs the `redis` extra, which the core does not.
    if name == "RedisStateStore":
        from chatstate.stores.redis import RedisStateStore

        return RedisStateStore
    if name == "OpenAICompatibleProvider":  # needs the `openai` extra (httpx)
        from chatstate.providers.openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider
    raise AttributeError(f"module 'chatstate' has no attribute {name!r}")
