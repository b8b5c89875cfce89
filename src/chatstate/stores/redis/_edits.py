"""The Redis backend's history operations (:class:`~chatstate.stores.Editing`: a page of entries
by number, an edit of one entry by number; and a pop of the newest) and its metadata write
(:class:`~chatstate.stores.Describing`). Each is one script (``lua/read_range.lua``,
``lua/edit.lua``, ``lua/pop.lua``, ``lua/write_meta.lua``), and so one round trip;
:class:`~._backend.RedisBackend` calls them on a session's keys."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from chatstate.stores._backend import EditOutcome, Page, Popped, Written
from chatstate.stores.redis import _scripts as lua
from chatstate.stores.redis._numbering import number_page
from chatstate.stores.redis._scripts import Execute

__all__ = ["edit", "pop", "read_range", "write_meta"]


def now_text() -> str:
    """This instance's clock for a session's times (created, updated): Unix seconds with six
    decimals, as the scripts store them (the client's clock, as every backend's: a TIME in the
    append script cost it a tenth of its instructions). From integer microseconds: formatting a
    float to six decimals cost more than the rest of the append's arguments."""
    micros = str(time.time_ns() // 1000)
    return f"{micros[:-6]}.{micros[-6:]}"


async def read_range(
    execute: Execute,
    keys: Sequence[str],
    *,
    before: int | None,
    after: int | None,
    limit: int,
    touch_ms: int,
) -> Page[bytes]:
    """See :meth:`~chatstate.stores.Editing.read_range`; ``keys`` as read.lua takes them."""
    if before is not None:
        mode, seq = "b", before
    elif after is not None:
        mode, seq = "a", after
    else:
        mode, seq = "", 0
    reply = await lua.READ_RANGE.run(execute, keys, mode, seq, limit, touch_ms, repeatable=True)
    if not reply:
        return Page([], 0)
    entries, start, tail, generation, version, length, gaps = reply
    if not entries:
        return Page([], 0, None, version, generation, length)
    page = Page(entries, tail - length + start, None, version, generation, length)
    if gaps:
        number_page(page, tail, gaps, start)
    return page


async def edit(
    write: Execute,
    keys: Sequence[str],
    seq: int,
    entry: bytes | None,
    *,
    truncate: bool,
    version: int | None,
    write_id: str,
    fence: str | None,
) -> Written | EditOutcome | None:
    """See :meth:`~chatstate.stores.Editing.edit`; None: the fence is refused (nothing was
    written). ``keys`` as edit.lua takes them."""
    reply = await lua.EDIT.run(
        write,
        keys,
        seq,
        int(truncate),
        "" if version is None else version,
        bytes.fromhex(write_id),
        fence or "",
        now_text(),
        *(() if entry is None else (entry,)),
        # Repeatable: the write id makes a retry after a lost reply a no-op if the first landed.
        repeatable=True,
    )
    if reply is None:
        return None
    if reply == b"stale":
        return "stale"
    if reply == b"missing":
        return "missing"
    length, new_version, applied = reply
    return Written(length, new_version, applied=bool(applied))


async def pop(
    write: Execute, keys: Sequence[str], count: int, seed: int, *, write_id: str, fence: str | None
) -> Popped[bytes] | None:
    """See the backend's ``pop``; ``seed`` the new generation; None: the fence is refused
    (nothing was written). ``keys`` as pop.lua takes them."""
    reply = await lua.POP.run(
        write, keys, count, seed, bytes.fromhex(write_id), fence or "", now_text(),
        repeatable=True,
    )  # fmt: skip
    if reply is None:
        return None
    entries, length, version, applied = reply
    if not applied:  # a retry: what its first run removed, kept by the script
        entries = _unpack_popped(entries)
    return Popped(entries, length, version, bool(applied))


def _unpack_popped(kept: bytes) -> list[bytes]:
    """The entries pop.lua kept of a pop: after the write id (8 bytes), each entry as its
    length, ``:`` and its bytes."""
    entries: list[bytes] = []
    at = 8 if kept else 0
    while 0 < at < len(kept):
        colon = kept.index(b":", at)
        end = colon + 1 + int(kept[at:colon])
        entries.append(kept[colon + 1 : end])
        at = end
    return entries


async def write_meta(
    write: Execute, keys: Sequence[str], meta: bytes | None, *, write_id: str, fence: str | None
) -> Written | Literal[False] | None:
    """See :meth:`~chatstate.stores.Describing.write_meta`; False: the fence is refused
    (nothing was written). ``keys`` as write_meta.lua takes them."""
    reply = await lua.WRITE_META.run(
        write,
        keys,
        bytes.fromhex(write_id),
        fence or "",
        *(() if meta is None else (meta,)),
        # Repeatable: the write id makes a retry after a lost reply a no-op if the first landed.
        repeatable=True,
    )
    if reply is None:
        return False
    if not reply:
        return None  # no session
    length, version, applied = reply
    return Written(length, version, applied=bool(applied))
