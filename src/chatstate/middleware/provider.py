"""ProviderMiddleware: sends the conversation to the model and records its reply; runs the tools
the reply calls; streams the reply of a streamed turn."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import anyio

from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.errors import (
    ChatStateError,
    ConfigurationError,
    PipelineError,
    ProviderError,
    ToolRoundsError,
)
from chatstate.messages import Message
from chatstate.pipeline import CallNext, RequestContext
from chatstate.providers.base import Provider, StreamChunk, check_provider
from chatstate.tools import Tool, run_calls
from chatstate.window import select_window

__all__ = ["ProviderMiddleware"]

INTERRUPTED = {"interrupted": True}
"""The metadata of a reply cut off where it stood."""


class ProviderMiddleware:
    """The end of a chain: sends the system prompt, the pinned messages, the session's summary,
    the history and the turn's messages to the provider, and sets its reply as the turn's
    response. The history is sent without half tool exchanges (:mod:`chatstate.window`) and, with
    a token budget, cut to what fits; the system prompt, pinned and new messages always go. In a
    streamed turn the provider's ``stream`` is read by the consumer itself, through
    ``context.chunk_filters``; an interrupted turn's response is the reply as far as it was read,
    marked ``{"interrupted": true}``.

    :param provider: any object with ``async complete(messages, **options)``.
    :param system_prompt: sent first in every request.
    :param pinned: messages sent after it in every request (few-shot examples, standing
        instructions), before those a middleware adds to ``context.pinned``; never stored.
    :param options: default provider options; a request's own override them.
    :param tools: offered to the model (:mod:`chatstate.tools`); the calls of a reply run
        concurrently and the model is asked again with their results. Without tools, a reply
        that calls tools is the turn's response, for the caller to run them.
    :param max_tool_rounds: past this many rounds, :class:`~chatstate.errors.ToolRoundsError`
        and nothing of the turn is stored.
    :param tool_timeout: each call's time limit, measured on ``clock``; a call past it answers
        the model with an error result.
    :param clock: the clock of the tools' timeouts.
    """

    __slots__ = (
        "_clock",
        "_fixed",
        "_max_rounds",
        "_options",
        "_stream",
        "_timeout",
        "_tools",
        "provider",
    )

    def __init__(
        self,
        provider: Provider,
        *,
        system_prompt: str | Message | None = None,
        pinned: Sequence[Message] = (),
        options: Mapping[str, Any] | None = None,
        tools: Sequence[Tool] = (),
        max_tool_rounds: int = 8,
        tool_timeout: timedelta | None = timedelta(seconds=30),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        check_provider(provider)
        self.provider = provider
        self._stream = getattr(provider, "stream", None)
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
        self._tools = _check_tools(tools)
        if self._tools:
            self._options.setdefault("tools", [tool.schema() for tool in self._tools.values()])
        if type(max_tool_rounds) is not int or max_tool_rounds < 0:
            raise ConfigurationError(
                f"max_tool_rounds must be an int >= 0, got {max_tool_rounds!r}"
            )
        self._max_rounds = max_tool_rounds
        if tool_timeout is not None and (
            not isinstance(tool_timeout, timedelta) or tool_timeout <= timedelta(0)
        ):
            raise ConfigurationError("tool_timeout must be a positive timedelta or None")
        self._timeout = None if tool_timeout is None else tool_timeout.total_seconds()
        self._clock = clock

    async def __call__(self, context: RequestContext, call_next: CallNext) -> None:
        history = await context.get_history()
        fixed: Sequence[Message] = self._fixed
        if context.pinned or context.summary is not None:
            fixed = [*fixed, *context.pinned]
            if context.summary is not None:
                fixed.append(context.summary)
        if context.regenerate and not context.incoming:
            raise PipelineError(
                "a regenerated turn needs a StateMiddleware before the provider (it reads the "
                "turn's message from the session)"
            )
        new = context.incoming or (context.message,)
        # A bound may have cut through a tool exchange, or one was never finished: send only what
        # a chat API accepts, and everything else.
        context.window_start, history = select_window(
            history, new, fixed=fixed, budget=context.budget
        )
        context.window = history
        messages = [*fixed, *history, *new]
        context.messages = messages
        options = {**self._options, **context.options} if self._options else context.options
        started = time.perf_counter()
        turn = _Turn(context, options)
        scope = None
        try:
            if context.stream is None:
                reply = await self._rounds(turn, messages)
            else:
                scope = context.model_scope = anyio.CancelScope()
                with scope:
                    reply = await self._rounds(turn, messages)
        except anyio.get_cancelled_exc_class():
            _interrupt(context, turn.written)
            raise
        context.timings["provider"] = time.perf_counter() - started
        if scope is not None and scope.cancelled_caught:
            _interrupt(context, turn.written)
            return
        context.response = reply
        context.new_messages.append(reply)

    async def _rounds(self, turn: _Turn, messages: list[Message]) -> Message:
        """The model's final reply, after as many rounds of tools as it calls for."""
        context, written = turn.context, turn.written
        tools = self._tools
        rounds = 0
        while True:
            written.clear()
            reply = await self._ask(turn, messages)
            if not tools or not reply.tool_calls:
                return reply
            written[:] = [reply.text]
            if rounds == self._max_rounds:
                raise ToolRoundsError(
                    f"the model still called tools after {rounds} rounds (max_tool_rounds); "
                    f"nothing of the turn of session {context.session_id!r} was stored",
                    messages=context.new_messages,
                )
            rounds += 1
            results = await run_calls(
                reply.tool_calls, tools, timeout=self._timeout, clock=self._clock
            )
            context.new_messages += (reply, *results)  # the exchange, whole
            messages = [*messages, reply, *results]
            context.messages = messages
            if context.stream is not None:
                for result in results:
                    _send(context, StreamChunk("", result))

    async def _ask(self, turn: _Turn, messages: list[Message]) -> Message:
        """One reply of the model: streamed to the consumer in a streamed turn."""
        context, options, stream = turn.context, turn.options, self._stream
        if context.stream is None or stream is None:
            try:
                reply = await self.provider.complete(messages, **options)
            except ChatStateError:
                raise
            except Exception as exc:
                raise self._failed(exc) from exc
            _check_reply(self.provider, reply)
            if context.stream is not None:
                _send(context, StreamChunk(reply.text, reply))
            return reply
        replies: list[Message] = []

        def take(chunk: StreamChunk) -> StreamChunk | None:
            if chunk.text:
                turn.written.append(chunk.text)
            if chunk.message is not None:
                replies.append(chunk.message)
            return _filtered(context, chunk)

        try:
            await context.stream.relay(stream(messages, **options), take)
        except ChatStateError:
            raise
        except Exception as exc:
            raise self._failed(exc) from exc
        final = replies[-1] if replies else None
        if final is None:
            raise ProviderError(
                f"{type(self.provider).__name__}.stream ended without a chunk with the message"
            )
        _check_reply(self.provider, final)
        return final

    def _failed(self, exc: Exception) -> ProviderError:
        return ProviderError(f"{type(self.provider).__name__} failed: {type(exc).__name__}: {exc}")


class _Turn:
    """What the rounds of one turn share."""

    __slots__ = ("context", "options", "written")

    def __init__(self, context: RequestContext, options: dict[str, Any]) -> None:
        self.context = context
        self.options = options
        self.written: list[str] = []
        """The text of the reply being written, for an interruption."""


def _filtered(context: RequestContext, chunk: StreamChunk) -> StreamChunk | None:
    filters = context.chunk_filters
    if filters:
        for chunk_filter in reversed(filters):
            passed = chunk_filter(chunk)
            if passed is None:
                return None
            chunk = passed
    return chunk


def _send(context: RequestContext, chunk: StreamChunk) -> None:
    passed = _filtered(context, chunk)
    if passed is not None:
        assert context.stream is not None
        context.stream.put(passed)


def _interrupt(context: RequestContext, written: list[str]) -> None:
    """End the turn where it stood: the reply as far as it was written, marked."""
    partial = Message(role="assistant", content="".join(written), metadata=INTERRUPTED)
    context.response = partial
    context.new_messages.append(partial)
    context.interrupted = True


def _check_reply(provider: Provider, reply: object) -> None:
    if not isinstance(reply, Message) or reply.role != "assistant":
        raise ProviderError(
            f"{type(provider).__name__} returned {_describe(reply)}, not an assistant Message"
        )


def _check_tools(tools: Sequence[Tool]) -> dict[str, Tool]:
    if isinstance(tools, Tool) or not all(isinstance(item, Tool) for item in tools):
        raise ConfigurationError("tools must be a sequence of chatstate.Tool (see @tool)")
    named = {item.name: item for item in tools}
    if len(named) != len(tools):
        raise ConfigurationError("tool names must be unique")
    return named


def _describe(value: object) -> str:
    if isinstance(value, Message):
        return f"a {value.role} Message"
    return f"a {type(value).__name__}"
