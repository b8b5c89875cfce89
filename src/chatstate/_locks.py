"""Per-key locks that exist only while someone holds or awaits them."""

from __future__ import annotations

import anyio


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        # A semaphore of one, not an anyio.Lock: a lock belongs to the task that took it, and a
        # holder may take it in one task and give it back in another (asyncio.wait_for waits in
        # a task of its own on Python 3.11). fast_acquire: a free one is taken without a trip
        # through the event loop, as with asyncio.Lock; every turn takes one, most find it free.
        self.lock = anyio.Semaphore(1, fast_acquire=True)
        self.users = 0


class KeyedLock:
    """Serialises the holders of one key; different keys never wait for each other.

    ``await locks.acquire(key)`` then ``locks.release(key)`` in a ``finally``. An entry is made on
    first use and dropped when its last holder or waiter leaves, so a million distinct keys over
    time leave nothing behind. A key may be released by another task than the one that took it.
    Runs on asyncio and on trio.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:  # cancelled while waiting: leave as if never come
            self._leave(key, entry)
            raise

    def release(self, key: str) -> None:
        entry = self._entries[key]
        entry.lock.release()
        self._leave(key, entry)

    def _leave(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if not entry.users:
            del self._entries[key]
