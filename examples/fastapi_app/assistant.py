"""The model behind the chat app: an offline scripted one by default, or any endpoint that speaks
OpenAI's Chat Completions API when the environment names one.

- ``OPENAI_BASE_URL`` and ``OPENAI_MODEL`` (and ``OPENAI_API_KEY`` if the endpoint wants one):
  an :class:`~chatstate.OpenAICompatibleProvider` (needs ``chatstate[openai]``).
- otherwise a :class:`~chatstate.ScriptedProvider` that needs no network: it remembers what you
  told it ("my name is Alice", then "what's my name?") and calls the ``calculate`` tool for
  arithmetic ("calculate 6 * 7").

The ``calculate`` tool (:data:`TOOLS`) is given to the provider middleware: when a reply calls it,
the pipeline runs it and asks the model again with its result.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from chatstate import Message, Provider, ScriptedProvider, ToolCall, tool
from chatstate.providers import recall_reply

_OPERATORS: Mapping[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@tool
async def calculate(expression: str) -> str:
    """The value of an arithmetic expression: numbers, + - * / ** and parentheses, e.g.
    '(2 + 3) * 4'.

    It walks the parsed expression itself (never ``eval``): numbers and those operators only.
    """

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            if not isinstance(node.value, bool):  # True + True is no arithmetic
                return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    result = value(ast.parse(expression, mode="eval").body)
    return str(int(result)) if result.is_integer() else f"{result:.10g}"


_ARITHMETIC = re.compile(
    r"^\s*(?:calculate|compute|what(?:'s| is))\s+([-+*/().\d\s]*\d[-+*/().\d\s]*?)\s*[?.!]?\s*$",
    re.IGNORECASE,
)


TOOLS = [calculate]
"""The tools the model may call."""


def scripted_reply(messages: Sequence[Message]) -> Message | str:
    """The offline model: a ``calculate`` call for arithmetic, the tool's result in words once it
    has run, and :func:`~chatstate.providers.recall_reply` for everything else."""
    last = messages[-1]
    if last.role == "tool":
        return f"The answer is {last.text}."
    match = _ARITHMETIC.match(last.text) if last.role == "user" else None
    if match and re.search(r"\d\s*[-+*/]", match.group(1)):
        call = ToolCall(
            id=f"call-{len(messages)}",
            name="calculate",
            arguments=json.dumps({"expression": match.group(1).strip()}),
        )
        return Message(role="assistant", tool_calls=[call])
    return recall_reply(messages)


@asynccontextmanager
async def model_from_env(environ: Mapping[str, str] = os.environ) -> AsyncIterator[Provider]:
    """An OpenAI-compatible provider if ``OPENAI_BASE_URL`` and ``OPENAI_MODEL`` are set (closed
    when the block ends), else the offline scripted one."""
    base_url, model = environ.get("OPENAI_BASE_URL"), environ.get("OPENAI_MODEL")
    if not (base_url and model):
        yield ScriptedProvider(scripted_reply)
        return
    from chatstate import OpenAICompatibleProvider

    api_key = environ.get("OPENAI_API_KEY")
    async with OpenAICompatibleProvider(base_url=base_url, model=model, api_key=api_key) as remote:
        yield remote
