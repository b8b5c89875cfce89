"""Tools the model may call: :class:`Tool`, the :func:`tool` decorator, and how calls are run.

Give tools to the provider middleware (``ProviderMiddleware(provider, tools=[...])``): their
schemas go to the provider with every request (the ``tools`` option, in the Chat Completions
format), and when a reply calls tools, the middleware runs them and asks the model again, up to
``max_tool_rounds`` times. The calls of one reply run concurrently (in a task group), each under a
timeout; a call that fails, times out, names no known tool or has bad arguments becomes a ``tool``
message saying so (``metadata={"error": true}``), which the model sees: it can try again or
answer without it. Only a cancellation stops the loop.

::

    @tool
    async def weather(city: str) -> str:
        \"""The weather in a city now.\"""
        return await fetch_weather(city)
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, overload

import anyio
import pydantic
import pydantic_core

from chatstate.clock import Clock
from chatstate.errors import ConfigurationError
from chatstate.messages import Message, ToolCall, describe_error

__all__ = ["Tool", "tool"]

ToolFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool: its ``name``, the JSON schema of its arguments (``parameters``, an object schema),
    and the async ``function`` called with them as keyword arguments. What it returns is sent
    to the model as text (a str as it is, anything else as JSON). ``timeout`` overrides the
    middleware's ``tool_timeout`` for this tool. :func:`tool` makes one from a function."""

    name: str
    function: ToolFunction
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    description: str = ""
    timeout: timedelta | None = None
    arguments: type[pydantic.BaseModel] | None = field(default=None, repr=False)
    """A model that checks and converts the arguments before the call (made by :func:`tool`
    from the function's signature); None: the parsed JSON object is passed as it is."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a tool's name must be a non-empty str, got {self.name!r}")
        if not callable(self.function):
            raise ConfigurationError(f"tool {self.name!r}: function must be an async callable")
        if not isinstance(self.parameters, Mapping):
            raise ConfigurationError(f"tool {self.name!r}: parameters must be a JSON schema dict")
        if self.timeout is not None and (
            not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0)
        ):
            raise ConfigurationError(f"tool {self.name!r}: timeout must be a positive timedelta")

    def schema(self) -> dict[str, Any]:
        """The tool as the Chat Completions API's ``tools`` option lists it."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    async def __call__(self, arguments: Mapping[str, Any]) -> Any:
        """Run the tool with ``arguments`` (checked first, if the tool has an arguments model)."""
        if self.arguments is not None:
            checked = self.arguments.model_validate(arguments)
            arguments = {name: getattr(checked, name) for name in type(checked).model_fields}
        return await self.function(**arguments)


@overload
def tool(function: ToolFunction, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: timedelta | None = None,
) -> Callable[[ToolFunction], Tool]: ...


def tool(
    function: ToolFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: timedelta | None = None,
) -> Tool | Callable[[ToolFunction], Tool]:
    """Make a :class:`Tool` of an async function: ``@tool`` or ``@tool(name=..., timeout=...)``.

    The name defaults to the function's, the description to its docstring's first paragraph, and
    the JSON schema of the arguments comes from its signature (pydantic), which also checks and
    converts the arguments the model gives before the call.
    """

    def make(function: ToolFunction) -> Tool:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"@tool needs an async function, got {function!r}")
        model = _arguments_model(function)
        schema = model.model_json_schema()
        schema.pop("title", None)
        doc = inspect.getdoc(function) or ""
        return Tool(
            name=name or function.__name__,
            function=function,
            parameters=schema,
            description=description if description is not None else doc.split("\n\n")[0],
            timeout=timeout,
            arguments=model,
        )

    return make if function is None else make(function)


def _arguments_model(function: ToolFunction) -> type[pydantic.BaseModel]:
    hints = typing.get_type_hints(function)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ConfigurationError(f"tool {function.__name__}: arguments are passed by name")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    return pydantic.create_model(f"{function.__name__}_arguments", **fields)


async def run_calls(
    calls: Sequence[ToolCall],
    tools: Mapping[str, Tool],
    *,
    timeout: float | None,
    clock: Clock,
) -> list[Message]:
    """The results of ``calls``, in their order: run concurrently, each under its timeout."""
    if len(calls) == 1:
        return [await _result(calls[0], tools, timeout, clock)]
    results: list[Message] = [None] * len(calls)  # type: ignore[list-item]  # all set below

    async def one(index: int) -> None:
        results[index] = await _result(calls[index], tools, timeout, clock)

    async with anyio.create_task_group() as group:
        for index in range(len(calls)):
            group.start_soon(one, index)
    return results


async def _result(
    call: ToolCall, tools: Mapping[str, Tool], timeout: float | None, clock: Clock
) -> Message:
    found = tools.get(call.name)
    if found is None:
        return _error(call, f"there is no tool named {call.name!r}")
    arguments = call.args
    if not isinstance(arguments, dict):
        return _error(call, "the arguments must be a JSON object")
    if found.timeout is not None:
        timeout = found.timeout.total_seconds()
    try:
        with nullcontext() if timeout is None else clock.fail_after(timeout):
            value = await found(arguments)
        text = value if isinstance(value, str) else pydantic_core.to_json(value).decode()
    except TimeoutError:
        return _error(call, f"the tool did not answer within {timeout:g} s")
    except pydantic.ValidationError as exc:
        return _error(call, describe_error(exc).replace("invalid message", "invalid arguments"))
    except Exception as exc:
        return _error(call, f"the tool failed: {type(exc).__name__}: {exc}")
    return Message(role="tool", content=text, name=call.name, tool_call_id=call.id)


def _error(call: ToolCall, problem: str) -> Message:
    return Message(
        role="tool",
        content=json.dumps({"error": problem}),
        name=call.name,
        tool_call_id=call.id,
        metadata={"error": True},
    )
