"""What the in-memory backend's census counts: messages exactly, their bytes by estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from chatstate.messages import Message

__all__ = ["count"]

_CHUNK = 10_000
"""Sessions counted between two yields to the event loop."""

_MESSAGE_OVERHEAD = 900
"""Heap bytes of a short text message besides its text (measured with tracemalloc: the model,
its dict, its fields set, the str header)."""


async def count(sessions: Sequence[Sequence[Any]]) -> tuple[int, int]:
    """The messages of ``sessions`` (each a session's entries), and an estimate of their heap
    bytes: about 900 a message plus its text, measured for short text messages, over one
    session in sixteen. Yields to the event loop between chunks."""
    messages = sampled_messages = sampled_bytes = 0
    for start in range(0, len(sessions), _CHUNK):
        for index, entries in enumerate(sessions[start : start + _CHUNK], start):
            messages += len(entries)
            if not index & 15:
                sampled_messages += len(entries)
                sampled_bytes += _size(entries)
        await anyio.sleep(0)
    per_message = sampled_bytes / sampled_messages if sampled_messages else 0.0
    return messages, round(messages * per_message)


def _size(entries: Sequence[Any]) -> int:
    """Estimated heap bytes of ``entries``: messages, or the codec's bytes."""
    total = 0
    for entry in entries:
        if type(entry) is Message:
            content = entry.content
            total += _MESSAGE_OVERHEAD + (len(content) if type(content) is str else len(entry.text))
        else:
            total += 33 + len(entry)
    return total
