"""The codec's cache: the messages of each session's latest entries, so that a load decodes only
the entries it has not seen.

A session's history changes by a turn at a time: its next load reads the window its last load read,
shifted by the entries written since. So the cache keeps, per session (and kind: history or
summary), the entries that session last read or wrote, in order, with their messages; a load finds
where its entries meet that window by comparing bytes (``memcmp``, in C: no entry is hashed), takes
the messages of the span they share and decodes only the rest. Every entry served is bytes-equal to
one decoded or encoded in the same session and place (an entry always decodes to the same immutable
message; an encrypted one only there), so the cache never serves what a decode would not give.
"""

from __future__ import annotations

from collections import OrderedDict

from chatstate.messages import Message
from chatstate.stores._envelope import _PLAIN_HEADER

__all__ = ["MAX_WINDOW", "Windows", "cost"]

MAX_WINDOW = 256
"""The most entries a window holds (an append beyond drops its oldest); longer loads bypass it."""

_Key = tuple[str, bytes]


class _Window:
    __slots__ = ("cost", "costs", "entries", "messages")

    def __init__(
        self, entries: list[bytes], messages: list[Message], costs: list[int], total: int
    ) -> None:
        self.entries, self.messages, self.costs, self.cost = entries, messages, costs, total

    def drop(self, count: int) -> int:
        """Forget the oldest ``count`` entries; returns the cost freed."""
        freed = sum(self.costs[:count])
        del self.entries[:count], self.messages[:count], self.costs[:count]
        self.cost -= freed
        return freed


class Windows:
    """Each session's latest window of entries and their messages, the least recently used
    dropped first while the estimated memory they hold (``held``) is over ``budget``."""

    __slots__ = ("_budget", "_windows", "held")

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._windows: OrderedDict[_Key, _Window] = OrderedDict()
        self.held = 0

    def __len__(self) -> int:
        """Entries held, in every window."""
        return sum(len(window.entries) for window in self._windows.values())

    def __contains__(self, entry: object) -> bool:
        return any(entry in window.entries for window in self._windows.values())

    def known(
        self, key: _Key, entries: list[bytes]
    ) -> tuple[int, int, list[Message], list[int]] | None:
        """Where ``entries`` (not empty) meet the session's window: ``entries[start:stop]`` are
        entries of the window, in its order; with their messages and costs. None if they do not
        meet."""
        window = self._windows.get(key)
        if window is None or not window.entries:  # none, or all a load read was skipped
            return None
        held = window.entries
        first = entries[0]
        if first in held:  # the common load: the window's tail, and perhaps entries after it
            at = held.index(first)
            count = min(len(held) - at, len(entries))
            if held[at : at + count] == entries[:count]:
                return 0, count, window.messages[at : at + count], window.costs[at : at + count]
        elif held[0] in entries:  # a longer load: older entries, then the window
            at = entries.index(held[0])
            count = min(len(held), len(entries) - at)
            if held[:count] == entries[at : at + count]:
                return at, at + count, window.messages[:count], window.costs[:count]
        return None

    def keep(
        self, key: _Key, entries: list[bytes], messages: list[Message], costs: list[int]
    ) -> None:
        """The session's window is now ``entries`` (lists the window takes over)."""
        windows = self._windows
        old = windows.pop(key, None)
        window = windows[key] = _Window(entries, messages, costs, sum(costs))
        self.held += window.cost - (0 if old is None else old.cost)
        if self.held > self._budget:
            self._evict()

    def extend(self, key: _Key, entries: list[bytes], messages: list[Message]) -> None:
        """Entries written to the session: after its window (which keeps its newest
        :data:`MAX_WINDOW`)."""
        costs = list(map(cost, entries))
        window = self._windows.get(key)
        if window is None:
            self.keep(key, entries.copy(), messages.copy(), costs)
            return
        self._windows.move_to_end(key)
        window.entries += entries
        window.messages += messages
        window.costs += costs
        added = sum(costs)
        window.cost += added
        self.held += added
        if len(window.entries) > MAX_WINDOW:
            self.held -= window.drop(len(window.entries) - MAX_WINDOW)
        if self.held > self._budget:
            self._evict()

    def _evict(self) -> None:
        """The least recently used windows out; then, if the window just used is over the budget
        on its own, its oldest entries."""
        windows = self._windows
        while self.held > self._budget and len(windows) > 1:
            _, oldest = windows.popitem(last=False)
            self.held -= oldest.cost
        if self.held > self._budget and windows:
            window = next(reversed(windows.values()))
            excess, over = 0, self.held - self._budget
            while over > 0 and excess < len(window.costs):
                over -= window.costs[excess]
                excess += 1
            self.held -= window.drop(excess)


def cost(entry: bytes) -> int:
    """Estimated bytes that remembering an entry holds: the entry, its message (whose text is
    about the size of a plain entry's JSON, and several times a compressed one's), and about
    1 KiB of objects around them (measured: 0.9 KiB for a short text message)."""
    return len(entry) * (2 if entry[1:2] == _PLAIN_HEADER[1:] else 5) + 1024
