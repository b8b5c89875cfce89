"""ProviderMiddleware: sends the conversation to the model and records its reply."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from chatstate.errors import ChatStateError, ConfigurationError, ProviderError
from chatstate.messages import Message
from chatstate.pipeline import CallNext, RequestContext
from chatstate.providers.base import Provider
from chatstate.window import valid_window

__all__ = ["ProviderMiddleware"]


class ProviderMiddleware:
    """The end of a chain: calls ``provider.complete`` with the system prompt (if any), the
    history and the new message, and sets the reply as the response of the turn.

    ``options`` are default provider options; per-request options override them.
    """

    __slots__ = ("_options", "_system", "provider")

    def __init__(
        self,
        provider: Provider,
        *,
        system_prompt: str | Message | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(getattr(provider, "complete", None)):
            raise ConfigurationError(
                f"provider must have an async complete(messages, **options) method; "
                f"{type(provider).__name__} has none"
            )
        self.provider = provider
        if isinstance(system_prompt, str):
            system_prompt = Message(role="system", content=system_prompt)
        elif system_prompt is not None and (
            not isinstance(system_prompt, Message) or system_prompt.role != "system"
        ):
            raise ConfigurationError("system_prompt must be a str or a Message with role 'system'")
        self._system = system_prompt
        self._options = dict(options or {})

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        # A bound may have cut through a tool exchange: send only what a chat API accepts.
        history = valid_window(await context.get_history(), (context.message,))
        if self._system is None:
            messages = [*history, context.message]
        else:
            messages = [self._system, *history, context.message]
        context.messages = messages
        options = {**self._options, **context.options} if self._options else context.options
        started = time.perf_counter()
        try:
            reply = await self.provider.complete(messages, **options)
        except ChatStateError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"{type(self.provider).__name__} failed: {type(exc).__name__}: {exc}"
            ) from exc
        context.timings["provider"] = time.perf_counter() - started
        if not isinstance(reply, Message) or reply.role != "assistant":
            raise ProviderError(
                f"{type(self.provider).__name__}.complete returned "
                f"{_describe(reply)}, not an assistant Message"
            )
        context.response = reply
        context.new_messages.append(reply)


def _describe(value: object) -> str:
    if isinstance(value, Message):
        return f"a {value.role} Message"
    return f"a {type(value).__name__}"
