"""Stopping background asyncio tasks for certain: cancel, wait, and cancel again.

`task.cancel(); await task` can wait forever on Python 3.11. There, `asyncio.wait_for` returns
the inner result instead of raising CancelledError when the cancellation arrives in the same
loop iteration as the inner awaitable completes (CPython gh-86296, fixed by the 3.12 rewrite).
A loop such as the cluster's election rounds, which calls etcd through `wait_for` several times
a second, then never sees that one cancellation and runs on: a graceful stop that hangs until
the supervisor kills the process (seen in CI, about once in 100 stops of a cluster leader).

`cancel_and_wait` repeats the cancellation until each task has ended, with an overall deadline
so that a task that refuses to end cannot stall the server's shutdown order either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_INTERVAL = 0.05  # seconds between repeated cancellations of a task still running


Task = asyncio.Future[Any]


async def cancel_and_wait(tasks: Iterable[Task | None], timeout: float = 5.0) -> set[Task]:
    """Cancel every task (None entries are skipped) and wait until each has ended or `timeout`
    seconds have passed; returns the tasks still running then (logged). A task that ended with
    an exception other than CancelledError is logged, so that no failure goes unseen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if task is not None}
    finished: set[Task] = set()
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_INTERVAL, left))
        finished |= done
    for task in finished:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed before it stopped", exc_info=task.exception())
    for task in pending:
        log.error("background task %r still running %.1f s after it was cancelled", task, timeout)
    return pending
