from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from chatstate._locks import KeyedLock

pytestmark = pytest.mark.anyio  # on asyncio and on trio


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
            await anyio.lowlevel.checkpoint()
            inside -= 1
        finally:
            locks.release("k")

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(worker)
    assert most == 1
    assert len(locks) == 0


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLock()
    all_in = anyio.Event()
    entered = 0

    async def worker(key: str) -> None:
        nonlocal entered
        await locks.acquire(key)
        try:
            entered += 1
            if entered == 10:
                all_in.set()
            with anyio.fail_after(5):  # a deadlock if keys shared a lock
                await all_in.wait()
        finally:
            locks.release(key)

    async with anyio.create_task_group() as group:
        for index in range(10):
            group.start_soon(worker, f"k{index}")


async def test_many_keys_leave_nothing_behind() -> None:
    locks = KeyedLock()
    for index in range(10_000):  # any entry left behind would show: a million take 0.4 s a run
        key = f"session-{index}"
        await locks.acquire(key)
        locks.release(key)
    assert len(locks) == 0


async def test_a_waiter_cancelled_while_waiting_leaves_nothing_behind() -> None:
    locks = KeyedLock()
    await locks.acquire("k")
    async with anyio.create_task_group() as group:
        group.start_soon(locks.acquire, "k")
        await anyio.wait_all_tasks_blocked()  # the waiter waits for the lock
        assert len(locks) == 1
        group.cancel_scope.cancel()
    locks.release("k")
    assert len(locks) == 0


async def test_a_key_taken_in_one_task_may_be_given_back_in_another() -> None:
    locks = KeyedLock()
    async with anyio.create_task_group() as group:
        group.start_soon(locks.acquire, "k")  # as asyncio.wait_for does on Python 3.11
    locks.release("k")  # by the test's own task
    assert len(locks) == 0
    await locks.acquire("k")  # free again
    locks.release("k")


async def test_a_waiter_cancelled_after_it_was_handed_the_key_hands_it_on() -> None:
    locks = KeyedLock()
    got: list[int] = []

    async def first(scope: anyio.CancelScope) -> None:
        with scope:
            await locks.acquire("k")
            got.append(1)
            locks.release("k")

    async def second() -> None:
        await locks.acquire("k")
        got.append(2)
        locks.release("k")

    await locks.acquire("k")
    scope = anyio.CancelScope()
    with anyio.fail_after(5):  # a key lost with the cancelled waiter would hang the second
        async with anyio.create_task_group() as group:
            group.start_soon(first, scope)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()  # the first waiter is cancelled, and before it runs again...
            locks.release("k")  # ...is handed the key
    assert got == [2] and len(locks) == 0
