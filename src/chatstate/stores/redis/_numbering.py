"""The numbers of a Redis session's entries, from its tail, its length and its gaps.

A session's entries are numbered from its head to below ``tail`` (the meta hash's field), with
gaps where pops and edits removed entries: a number is never given twice in a session's life
(:mod:`chatstate.stores._backend`). The gaps are kept as text in the meta field ``h`` (absent:
none): ``offset:count`` pairs joined by ``,``, each gap's first number counted from the end of
the gap before (from 0 for the first), so ``"3:2,1:1"`` is 3-4 and 6. Only numbers above the
head and below the tail are gaps, so the head is ``tail - length - (their total)``. The Lua side
is ``lua/_numbers.lua``; the scripts return the text and this module turns it into numbers, so
Redis spends nothing on it (and, the other way, makes the text of numbers a restore gives).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from chatstate.errors import InvalidInputError
from chatstate.stores._backend import Page

__all__ = ["NUMBERS_BELOW", "gaps_text", "number_page", "numbers_of", "parse_gaps", "replace_args"]

NUMBERS_BELOW = 10**15
"""A Redis session's numbers stay below this (message ids of 15 digits at most): the scripts
count in Lua numbers, doubles, exact only below 2**53, which leaves room for 8 * 10**15 appends
after the highest."""

_PAIR = re.compile(rb"(\d+):(\d+)")


def parse_gaps(text: bytes) -> list[tuple[int, int]]:
    """The gaps as ``(first number, count)`` pairs, oldest first."""
    gaps: list[tuple[int, int]] = []
    at = 0
    for offset, count in _PAIR.findall(text):
        first = at + int(offset)
        gaps.append((first, int(count)))
        at = first + int(count)
    return gaps


def gaps_text(numbers: Sequence[int]) -> str:
    """The text of the gaps between ``numbers`` (strictly increasing): what :func:`parse_gaps`
    reads back."""
    if numbers[-1] - numbers[0] == len(numbers) - 1:
        return ""  # nearly always: they run on without a gap
    parts: list[str] = []
    at = 0  # the end of the gap before
    for before, number in pairwise(numbers):
        if number > before + 1:
            parts.append(f"{before + 1 - at}:{number - before - 1}")
            at = number
    return ",".join(parts)


def replace_args(numbers: Sequence[int] | None) -> tuple[int | str, str]:
    """replace.lua's arguments for the numbers a replace gives: the number after the last, and
    the text of the gaps (``("", "")``: none given). Numbers from :data:`NUMBERS_BELOW` on are
    refused (InvalidInputError), before anything is written, rather than stored wrong."""
    if numbers is None:
        return "", ""
    if numbers[-1] >= NUMBERS_BELOW:
        raise InvalidInputError(
            f"a Redis session's message ids must be below {NUMBERS_BELOW}, got {numbers[-1]}"
        )
    return numbers[-1] + 1, gaps_text(numbers)


def numbers_of(tail: int, length: int, gaps: bytes, start: int, count: int) -> list[int]:
    """The numbers of the ``count`` entries from index ``start`` (0: the head) of a session of
    ``length`` entries."""
    ranges = parse_gaps(gaps)
    number = tail - length - sum(size for _, size in ranges)  # the head
    index, end = 0, start + count
    numbers: list[int] = []
    # Each run of entries ends where a gap (or the tail) begins.
    for first, size in [*ranges, (tail, 0)]:
        run = first - number
        low, high = max(start, index), min(end, index + run)
        if low < high:
            numbers.extend(range(number + low - index, number + high - index))
        index += run
        if index >= end:
            break
        number = first + size
    return numbers


def number_page(page: Page[bytes], tail: int, gaps: bytes, start: int) -> None:
    """Give ``page`` the numbers of its entries, the first at index ``start`` of the session:
    ``first_seq``, and ``numbers`` if they do not run on from it."""
    numbers = numbers_of(tail, page.length, gaps, start, len(page.entries))
    page.first_seq = numbers[0]
    if numbers[-1] - numbers[0] != len(numbers) - 1:
        page.numbers = numbers
