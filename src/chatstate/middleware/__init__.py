"""The built-in middlewares, one per module."""

from chatstate.middleware.provider import ProviderMiddleware
from chatstate.middleware.state import StateMiddleware, StateMiddlewareConfig

__all__ = ["ProviderMiddleware", "StateMiddleware", "StateMiddlewareConfig"]
