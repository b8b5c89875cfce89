"""The Redis backend's conversation index: a user's conversations in two sorted sets in the
user's slot (``conversations``: scored by last activity, ms; ``deadlines``: by deadline, ms, or
``inf``), each call one script (``lua/*_conversation*.lua``), and so one round trip."""

from __future__ import annotations

from collections.abc import Sequence

from chatstate.stores.redis import _scripts as lua
from chatstate.stores.redis._scripts import Execute

__all__ = ["drop", "index", "listing"]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


async def index(
    execute: Execute, keys: Sequence[str], member: str, *, now: float, ttl: float | None
) -> None:
    """Record ``member`` as active at ``now``, for ``ttl`` more seconds (None: for ever)."""
    deadline = "inf" if ttl is None else str(_ms(now + ttl))
    await lua.INDEX_CONVERSATION.run(execute, keys, _ms(now), member, deadline, repeatable=True)


async def listing(
    execute: Execute,
    keys: Sequence[str],
    *,
    now: float,
    offset: int,
    limit: int,
    after: tuple[float, str] | None,
) -> list[tuple[str, float]]:
    """The live members, most recent first, ties by member descending: ``(member, last
    active)`` pairs, from ``offset``, or after the pair ``after`` in that order."""
    cursor: tuple[int | str, str] = ("", "") if after is None else (_ms(after[0]), after[1])
    reply = await lua.LIST_CONVERSATIONS.run(
        execute, keys, _ms(now), offset, limit, *cursor, repeatable=True
    )
    return [
        (reply[index].decode(), float(reply[index + 1]) / 1000) for index in range(0, len(reply), 2)
    ]


async def drop(execute: Execute, keys: Sequence[str]) -> list[str]:
    """Forget the index; the members it held."""
    members = await lua.DROP_CONVERSATIONS.run(execute, keys, repeatable=True)
    return [member.decode() for member in members]
