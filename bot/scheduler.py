"""Dispatch: engine workers take jobs from the fair queue, one worker per engine slot.

The order is ``bot.fair_queue.FairQueue``'s (tier priority, fast before relax, aging, round-robin between
users). On top of it the scheduler enforces each user's ``max_concurrent``: a job whose owner already has
that many running is *parked* and goes back into the queue, with its original age, when one of them ends.
The queue holds only ids; the database row is the truth, so it is rebuilt from the database at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from bot.fair_queue import FairQueue, QueueEntry

log = logging.getLogger(__name__)

JobHandler = Callable[[str], Awaitable[None]]


class Scheduler:
    def __init__(
        self,
        *,
        aging_seconds_per_level: float = 60.0,
        max_wait: dict[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = FairQueue(aging_seconds_per_level, max_wait)
        self._clock = clock
        self._parked: defaultdict[str, list[QueueEntry]] = defaultdict(list)
        self._caps: dict[str, int] = {}
        self._running_by_user: defaultdict[str, int] = defaultdict(int)
        self._workers: list[asyncio.Task[None]] = []
        self.running: set[str] = set()
        self._stopping = False
        self._has_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()

    # -- the queue -----------------------------------------------------------------------------

    def submit(self, entry: QueueEntry, max_concurrent: int | None = None) -> None:
        """Queue a job once; submitting a job that is already waiting or running is a no-op."""
        if entry.job_id in self._queue or entry.job_id in self.running or self._is_parked(entry.job_id):
            return
        if max_concurrent is not None:
            self._caps[entry.user_id] = max_concurrent
        self._queue.push(entry)
        self._has_work.set()

    def discard(self, job_id: str) -> None:
        """Forget a waiting job (canceled or timed out)."""
        if not self._queue.remove(job_id):
            for entries in self._parked.values():
                entries[:] = [e for e in entries if e.job_id != job_id]

    def position(self, job_id: str) -> int | None:
        """1-based place in line, or None when the job is not in the queue (running, parked or gone)."""
        return self._queue.position(job_id, self._clock())

    @property
    def waiting(self) -> int:
        return len(self._queue) + sum(len(entries) for entries in self._parked.values())

    def _is_parked(self, job_id: str) -> bool:
        return any(e.job_id == job_id for entries in self._parked.values() for e in entries)

    # -- pausing -------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop dispatching (running jobs finish; waiting ones keep their places)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    # -- workers -------------------------------------------------------------------------------

    def start(self, slots: int, handler: JobHandler) -> None:
        self._stopping = False
        for slot in range(slots):
            self._workers.append(asyncio.create_task(self._work(handler), name=f"engine-worker-{slot}"))

    async def stop(self, grace: float = 0.0) -> None:
        """Take no new work; give running jobs ``grace`` seconds to finish, then cancel them.

        A canceled job keeps its state in the database and is resumed at the next start.
        """
        self._stopping = True
        self._has_work.set()
        if grace > 0 and self.running:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.info(
                    "stopping with %d jobs still running; they resume at the next start", len(self.running)
                )
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def _next(self) -> QueueEntry | None:
        """The next job this worker may run, waiting for one (None when stopping)."""
        while not self._stopping:
            await self._open.wait()
            entry = self._queue.pop(self._clock())
            if entry is None:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            if self._running_by_user[entry.user_id] >= self._caps.get(entry.user_id, 1 << 30):
                self._parked[entry.user_id].append(entry)  # back in line when one of theirs ends
                continue
            return entry
        return None

    async def _work(self, handler: JobHandler) -> None:
        while True:
            entry = await self._next()
            if entry is None:
                return
            job_id = entry.job_id
            self.running.add(job_id)
            self._running_by_user[entry.user_id] += 1
            self._idle.clear()
            try:
                await handler(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a handler bug must not kill the worker
                log.exception("job %s: worker handler crashed", job_id)
            finally:
                self.running.discard(job_id)
                self._running_by_user[entry.user_id] -= 1
                for parked in self._parked.pop(entry.user_id, []):
                    self._queue.push(parked)
                    self._has_work.set()
                if not self.running:
                    self._idle.set()
