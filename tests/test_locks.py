from __future__ import annotations

import asyncio

from chatstate._locks import KeyedLock


async def test_holders_of_one_key_run_one_at_a_time() -> None:
    locks = KeyedLock()
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        await locks.acquire("k")
        try:
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1
        finally:
            locks.release("k")

    await asyncio.gather(*(worker() for _ in range(50)))
    assert most == 1
    assert len(locks) == 0


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLock()
    all_in = asyncio.Event()
    entered = 0

    async def worker(key: str) -> None:
        nonlocal entered
        await locks.acquire(key)
        try:
            entered += 1
            if entered == 10:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), timeout=5)  # deadlocks if keys shared a lock
        finally:
            locks.release(key)

    await asyncio.gather(*(worker(f"k{index}") for index in range(10)))


async def test_a_million_keys_leave_nothing_behind() -> None:
    locks = KeyedLock()
    for index in range(1_000_000):
        key = f"session-{index}"
        await locks.acquire(key)
        locks.release(key)
    assert len(locks) == 0


async def test_a_waiter_cancelled_while_waiting_leaves_nothing_behind() -> None:
    locks = KeyedLock()
    await locks.acquire("k")
    waiter = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    assert len(locks) == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    locks.release("k")
    assert len(locks) == 0
