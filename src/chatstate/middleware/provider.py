"""ProviderMiddleware: sends the conversation to the model and records its reply."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from chatstate.errors import ChatStateError, ConfigurationError, ProviderError
from chatstate.messages import Message
from chatstate.pipeline import CallNext, RequestContext
from chatstate.providers.base import Provider, check_provider
from chatstate.window import select_window

__all__ = ["ProviderMiddleware"]


class ProviderMiddleware:
    """The end of a chain: calls ``provider.complete`` with the system prompt (if any), the
    pinned messages, the session's summary (if any), the history and the new message, and sets
    the reply as the response of the turn.

    The history is sent without its orphans (a tool result without its call, a call without all
    of its results: see :mod:`chatstate.window`) and, with a token budget, cut to what fits beside
    everything else; the system prompt, the pinned messages and the new message are always sent.
    ``pinned`` messages (few-shot examples, standing instructions) follow the system prompt in
    every request, before those a middleware adds to ``context.pinned``. ``options`` are default
    provider options; per-request options override them.
    """

    __slots__ = ("_fixed", "_options", "provider")

    def __init__(
        self,
        provider: Provider,
        *,
        system_prompt: str | Message | None = None,
        pinned: Sequence[Message] = (),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        check_provider(provider)
        self.provider = provider
        if isinstance(system_prompt, str):
            system_prompt = Message(role="system", content=system_prompt)
        elif system_prompt is not None and (
            not isinstance(system_prompt, Message) or system_prompt.role != "system"
        ):
            raise ConfigurationError("system_prompt must be a str or a Message with role 'system'")
        if isinstance(pinned, Message | str) or not all(
            isinstance(message, Message) for message in pinned
        ):
            raise ConfigurationError("pinned must be a sequence of chatstate.Message")
        self._fixed: tuple[Message, ...] = (
            *(() if system_prompt is None else (system_prompt,)),
            *pinned,
        )
        self._options = dict(options or {})

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        history = await context.get_history()
        fixed: Sequence[Message] = self._fixed
        if context.pinned or context.summary is not None:
            fixed = [*fixed, *context.pinned]
            if context.summary is not None:
                fixed.append(context.summary)
        new = (context.message,)
        # A bound may have cut through a tool exchange, or one was never finished: send only what
        # a chat API accepts, and everything else.
        context.window_start, history = select_window(
            history, new, fixed=fixed, budget=context.budget
        )
        context.window = history
        messages = [*fixed, *history, context.message]
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
