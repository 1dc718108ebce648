"""Answering Discord in time without canceling database work.

Discord wants an answer to an interaction within 3 seconds, so a click or a command waits only so long
for the database before it answers "busy". ``asyncio.wait_for`` would cancel the query on time-out, and a
query canceled mid-statement leaves its SQLite connection a "zombie" that keeps the file's write lock
until the garbage collector frees the cursor (see ``storage.db.Database.close``): every writer then
waits. So here the work is only *waited for* with a time limit; when the time is up the caller gets
``TimeoutError`` and the work finishes in the background, its result dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_left_running: set[asyncio.Future[Any]] = set()
"""Work whose waiter gave up: held here until it ends (the event loop keeps only weak references)."""


async def finish_within(work: Awaitable[T], seconds: float) -> T:
    """``work``'s result if it is ready within ``seconds``; else ``TimeoutError``, and it goes on alone."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    except asyncio.CancelledError:
        _leave_running(task)
        raise
    if task in done:
        return task.result()
    _leave_running(task)
    raise TimeoutError


def _leave_running(task: asyncio.Future[Any]) -> None:
    _left_running.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _left_running.discard(task)
    if not task.cancelled() and task.exception() is not None:  # e.g. a refusal nobody is waiting for
        log.info("work its caller gave up on ended with %s", type(task.exception()).__name__)


ANSWER_BUDGET = 2.5
"""Seconds from an interaction's arrival that the checks before its answer may take together (database
lookups, the per-user admission lock, admission, saving the job): Discord allows 3 s, and the rest is for
the answer's own request. One budget for all of them, so admission gets whatever the lookups left: six
buttons clicked at once by one user queue on that user's admission lock."""


class Deadline:
    """A time by which an interaction must be answered; each wait on the way gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self._end = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(self._end - asyncio.get_running_loop().time(), 0.0)

    async def wait(self, work: Awaitable[T]) -> T:
        return await finish_within(work, self.left())
