"""Per-key locks that exist only while someone holds or awaits them."""

from __future__ import annotations

from collections import deque

import anyio


class KeyedLock:
    """Serialises the holders of one key; different keys never wait for each other.

    ``await locks.acquire(key)`` then ``locks.release(key)`` in a ``finally``. An entry is made on
    first use and dropped when its last holder or waiter leaves, so a million distinct keys over
    time leave nothing behind. Waiters are served first come, first served; a key may be released
    by another task than the one that took it. Runs on asyncio and on trio.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        # key -> the events of the tasks waiting for it, in order; present while the key is held.
        # A free key is taken without an event or a trip through the event loop (as with
        # asyncio.Lock): every turn takes one and most find it free, and an anyio lock or event
        # costs microseconds to make.
        self._entries: dict[str, deque[anyio.Event]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, key: str) -> None:
        waiters = self._entries.get(key)
        if waiters is None:
            self._entries[key] = deque()
            return
        turn = anyio.Event()
        waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:  # cancelled while waiting: leave as if never come
            if turn.is_set():
                self.release(key)  # handed the key meanwhile: hand it on
            else:
                waiters.remove(turn)
            raise

    def release(self, key: str) -> None:
        waiters = self._entries[key]
        if waiters:
            waiters.popleft().set()  # the key passes to the first waiter, still held
        else:
            del self._entries[key]
