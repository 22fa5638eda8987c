"""iggy.tasks.cancel_and_wait: a task that misses a cancellation still ends, one that never
ends cannot stall the caller beyond the deadline, and failures are logged."""

from __future__ import annotations

import asyncio
import logging
import sys

from iggy.tasks import cancel_and_wait


async def _wait_for_loop(inner: list[asyncio.Future[int]], rounds: list[int]) -> None:
    """The shape of the cluster's election loop: one asyncio.wait_for after another."""
    loop = asyncio.get_running_loop()
    while True:
        fut: asyncio.Future[int] = loop.create_future()
        inner.append(fut)
        await asyncio.wait_for(fut, 10)
        rounds.append(1)


def test_a_cancellation_lost_in_wait_for_is_repeated_until_the_task_ends():
    async def main() -> tuple[bool, bool, int]:
        inner: list[asyncio.Future[int]] = []
        rounds: list[int] = []
        task = asyncio.ensure_future(_wait_for_loop(inner, rounds))
        await asyncio.sleep(0)
        # the inner awaitable completes in the same iteration as the cancellation: on 3.11
        # wait_for returns its result and the loop goes on (CPython gh-86296)
        inner[-1].set_result(1)
        task.cancel()
        await asyncio.sleep(0.05)
        ran_on = not task.done()
        left = await cancel_and_wait([task], timeout=2.0)
        return ran_on, not left and task.done(), len(rounds)

    ran_on, ended, rounds = asyncio.run(main())
    assert ended
    if sys.version_info < (3, 12):  # the first cancellation was swallowed; the repeat ended the task
        assert ran_on and rounds >= 1


def test_a_task_that_swallows_cancellations_a_few_times_still_ends():
    async def stubborn(swallow: int) -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallow == 0:
                    raise
                swallow -= 1

    async def main() -> tuple[set[object], bool]:
        task = asyncio.ensure_future(stubborn(3))
        await asyncio.sleep(0)
        left = await cancel_and_wait([task, None], timeout=2.0)
        return left, task.cancelled()

    left, cancelled = asyncio.run(main())
    assert left == set() and cancelled


def test_a_task_that_never_ends_is_returned_after_the_deadline(caplog):
    async def immortal(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    async def main() -> tuple[int, float, bool]:
        stop = asyncio.Event()
        task = asyncio.ensure_future(immortal(stop))
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        left = await cancel_and_wait([task], timeout=0.3)
        waited = asyncio.get_running_loop().time() - started
        stop.set()
        task.cancel()
        await asyncio.wait([task])
        return len(left), waited, task.done()

    with caplog.at_level(logging.ERROR, logger="iggy.tasks"):
        count, waited, done = asyncio.run(main())
    assert count == 1 and done
    assert waited >= 0.3
    assert "still running" in caplog.text


def test_a_task_that_failed_is_logged(caplog):
    async def fails() -> None:
        raise RuntimeError("boom at work")

    async def main() -> set[object]:
        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0)
        return await cancel_and_wait([task])

    with caplog.at_level(logging.ERROR, logger="iggy.tasks"):
        assert asyncio.run(main()) == set()
    assert "boom at work" in caplog.text
