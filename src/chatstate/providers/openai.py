"""A provider for any endpoint that speaks OpenAI's Chat Completions API (the ``openai`` extra:
httpx): OpenAI itself, or a local llama.cpp, vLLM or Ollama server.

::

    provider = OpenAICompatibleProvider(
        base_url="http://localhost:11434/v1", model="llama3.2", api_key=None
    )
    reply = await provider.complete(messages, temperature=0.2)
    async for chunk in provider.stream(messages):
        print(chunk.text, end="")          # the last chunk also carries the whole reply
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import anyio

from chatstate.errors import ConfigurationError, ProviderError
from chatstate.messages import ImagePart, Message, TextPart, ToolCall
from chatstate.providers.base import StreamChunk

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "OpenAICompatibleProvider needs httpx: pip install 'chatstate[openai]'"
    ) from exc

__all__ = ["OpenAICompatibleProvider", "StreamChunk"]

_RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAICompatibleProvider:
    """Chat Completions over HTTP, async, with retries and typed errors.

    - ``base_url``: the API root (``https://api.openai.com/v1``, ``http://localhost:8000/v1``).
    - ``model``: the model name the endpoint knows.
    - ``api_key``: sent as ``Authorization: Bearer ...``; never shown in reprs, errors or logs.
    - ``timeout``: for one HTTP attempt; ``max_retries`` attempts more are made on 408, 409, 429
      and 5xx answers and on network errors, with exponential backoff and full jitter from
      ``backoff``, waiting at least what a ``Retry-After`` header asks.
    - ``options``: defaults for every request (``temperature``, ``max_tokens``, ...); per-call
      options win.
    - ``client``: an ``httpx.AsyncClient`` of your own (its transport, proxies, limits); else the
      provider makes one, closed by :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: timedelta = timedelta(seconds=60),
        max_retries: int = 2,
        backoff: timedelta = timedelta(milliseconds=500),
        options: Mapping[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ConfigurationError(f"model must be a non-empty str, got {model!r}")
        if type(max_retries) is not int or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.options = dict(options or {})
        self._backoff = backoff.total_seconds()
        self._api_key = api_key
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient()
        self._timeout = httpx.Timeout(timeout.total_seconds())

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(base_url={self.base_url!r}, model={self.model!r})"

    async def complete(self, messages: Sequence[Message], **options: Any) -> Message:
        """The assistant's reply to ``messages``."""
        response = await self._post(self._body(messages, options, stream=False))
        try:
            reply = response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderError(f"the provider's answer is not a chat completion: {exc!r}") from exc
        return _to_message(reply)

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncIterator[StreamChunk]:
        """The reply as it is written: text chunks, then a last chunk with the whole message."""
        body = self._body(messages, options, stream=True)
        response = await self._post(body, stream=True)
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    delta = json.loads(data)["choices"][0].get("delta") or {}
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    raise ProviderError(
                        f"the provider's stream is not chat chunks: {exc!r}"
                    ) from exc
                for call in delta.get("tool_calls") or ():
                    part = calls.setdefault(
                        call.get("index", 0), {"id": "", "name": "", "args": ""}
                    )
                    function = call.get("function") or {}
                    part["id"] += call.get("id") or ""
                    part["name"] += function.get("name") or ""
                    part["args"] += function.get("arguments") or ""
                if content := delta.get("content"):
                    text.append(content)
                    yield StreamChunk(content)
        except httpx.HTTPError as exc:
            raise ProviderError(f"the provider's stream broke off: {type(exc).__name__}") from exc
        finally:
            await response.aclose()
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            reply["tool_calls"] = [
                {"id": c["id"], "function": {"name": c["name"], "arguments": c["args"] or "{}"}}
                for _, c in sorted(calls.items())
            ]
        yield StreamChunk("", _to_message(reply))

    async def aclose(self) -> None:
        """Close the HTTP client if the provider made it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _body(
        self, messages: Sequence[Message], options: Mapping[str, Any], *, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, **self.options, **options}
        body["messages"] = [_to_openai(message) for message in messages]
        if stream:
            body["stream"] = True
        return body

    async def _post(self, body: dict[str, Any], *, stream: bool = False) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                request = self._client.build_request(
                    "POST", url, json=body, headers=headers, timeout=self._timeout
                )
                response = await self._client.send(request, stream=stream)
            except httpx.TransportError as exc:  # refused, reset, timed out: never answered
                if last:
                    raise ProviderError(
                        f"the provider at {self.base_url} could not be reached: "
                        f"{type(exc).__name__}"
                    ) from exc
                await anyio.sleep(self._delay(attempt, None))
                continue
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            if last or response.status_code not in _RETRIED_STATUSES:
                raise _http_error(response)
            await anyio.sleep(self._delay(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = random.uniform(0, self._backoff * 2**attempt)
        try:
            return max(delay, min(float(retry_after), 60.0)) if retry_after else delay
        except ValueError:  # an HTTP date: not worth parsing for a retry
            return delay


def _http_error(response: httpx.Response) -> ProviderError:
    message = None
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = response.text[:200] or None
    return ProviderError(
        f"the provider answered {response.status_code}" + (f": {message}" if message else ""),
        status=response.status_code,
        provider_message=message,
    )


def _to_openai(message: Message) -> dict[str, Any]:
    """A message in the Chat Completions request format."""
    out: dict[str, Any] = {"role": message.role}
    content = message.content
    if isinstance(content, str) or content is None:
        out["content"] = content
    else:
        out["content"] = [_part(part) for part in content]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    image: dict[str, Any] = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _to_message(reply: Any) -> Message:
    """The assistant message of a Chat Completions answer."""
    try:
        calls = tuple(
            ToolCall(
                id=call["id"],
                name=call["function"]["name"],
                arguments=call["function"].get("arguments") or "{}",
            )
            for call in reply.get("tool_calls") or ()
        )
        return Message(role="assistant", content=reply.get("content"), tool_calls=calls)
    except Exception as exc:
        raise ProviderError(f"the provider's reply is not an assistant message: {exc}") from exc
