"""The Redis backend's Lua scripts: one ``.lua`` file each (in ``lua/``), read once, run by SHA."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, TypeAlias

from redis.exceptions import NoScriptError

__all__ = ["Execute", "Script", "script"]

Execute: TypeAlias = Callable[..., Awaitable[Any]]
"""Runs one Redis command: ``await execute("LRANGE", key, 0, -1, repeatable=True)``."""


class Script:
    """A Lua script run by EVALSHA: one round trip, falling back to EVAL (which also caches it on
    the server) when the server does not know it yet, after a restart or on a new cluster node."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"

    async def run(
        self, execute: Execute, keys: Sequence[str], *args: Any, repeatable: bool = False
    ) -> Any:
        """Run the script on ``keys`` (all in one slot) with ``args``; see
        :meth:`~chatstate.stores.redis.AutoPipeline.execute` for ``repeatable``."""
        try:
            return await execute(*self.head(keys), *args, repeatable=repeatable)
        except NoScriptError:
            return await self.evaluate(execute, keys, *args, repeatable=repeatable)

    def head(self, keys: Sequence[str]) -> tuple[str | int, ...]:
        """The EVALSHA command on ``keys``, but for the arguments: for a caller that keeps it."""
        return ("EVALSHA", self.sha, len(keys), *keys)

    async def evaluate(
        self, execute: Execute, keys: Sequence[str], *args: Any, repeatable: bool = False
    ) -> Any:
        """Run the script by EVAL, which also caches it on the server: after EVALSHA found
        it unknown (NoScriptError)."""
        return await execute("EVAL", self.source, len(keys), *keys, *args, repeatable=repeatable)


def _source(name: str) -> str:
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def script(
    name: str,
    *,
    writes: bool = False,
    lifecycle: bool = False,
    numbers: bool = False,
    touches: bool = False,
) -> Script:
    """The script in ``lua/<name>.lua``, shipped inside the package; a script that ``writes``
    a session comes after ``lua/_writes.lua`` (its write ids and fences, and the clock), one
    that sets its expiry, removes it or adopts a 0.1.0 list (``lifecycle``) after
    ``lua/_lifecycle.lua``, one that needs its ``numbers`` after ``lua/_numbers.lua`` (the gaps
    between them), a read that ``touches`` (a sliding expiry) after ``lua/_touch.lua``."""
    preludes = [_WRITES] * writes + [_LIFECYCLE] * lifecycle
    preludes += [_NUMBERS] * numbers + [_TOUCH] * touches
    return Script(name, "\n".join([*preludes, _source(name)]))


_WRITES = _source("_writes")
_LIFECYCLE = _source("_lifecycle")
_NUMBERS = _source("_numbers")
_TOUCH = _source("_touch")
READ = script("read", touches=True)
READ_RANGE = script("read_range", numbers=True, touches=True)
APPEND = script("append", writes=True, numbers=True)
REPLACE = script("replace", writes=True, lifecycle=True, numbers=True)
DELETE = script("delete", writes=True, lifecycle=True)
POP = script("pop", writes=True, lifecycle=True, numbers=True)
EDIT = script("edit", writes=True, lifecycle=True, numbers=True)
COMPACT = script("compact", writes=True, lifecycle=True, numbers=True)
SNAPSHOT = script("snapshot")
WRITE_META = script("write_meta", writes=True, lifecycle=True)
LEASE_ACQUIRE = script("lease_acquire")
LEASE_RENEW = script("lease_renew")
LEASE_RELEASE = script("lease_release")
INDEX_CONVERSATION = script("index_conversation")
LIST_CONVERSATIONS = script("list_conversations")
DROP_CONVERSATIONS = script("drop_conversations")
