"""The job queue: an asyncio priority queue feeding one worker per engine slot.

Order is (priority, arrival): a lower priority number runs first, ties in arrival order. The queue
holds only job ids; the database row is the truth, so the queue can always be rebuilt from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

JobHandler = Callable[[str], Awaitable[None]]


class Scheduler:
    def __init__(self) -> None:
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._arrival = itertools.count()
        self._queued: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self.running: set[str] = set()
        self._stopping = False
        self._idle = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()

    def pause(self) -> None:
        """Stop dispatching (running jobs finish; waiting ones keep their places)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def submit(self, job_id: str, priority: int = 0) -> None:
        """Queue a job once; submitting a job that is already waiting is a no-op."""
        if job_id in self._queued or job_id in self.running:
            return
        self._queued.add(job_id)
        self._queue.put_nowait((priority, next(self._arrival), job_id))

    def discard(self, job_id: str) -> None:
        """Forget a waiting job (it was canceled); its queue entry is skipped when reached."""
        self._queued.discard(job_id)

    def position(self, job_id: str) -> int | None:
        """1-based place in line, or None when the job is not waiting."""
        if job_id not in self._queued:
            return None
        waiting = sorted(entry for entry in self._queue._queue if entry[2] in self._queued)  # type: ignore[attr-defined]
        for place, entry in enumerate(waiting, start=1):
            if entry[2] == job_id:
                return place
        return None

    @property
    def waiting(self) -> int:
        return len(self._queued)

    def start(self, slots: int, handler: JobHandler) -> None:
        self._stopping = False
        for slot in range(slots):
            self._workers.append(asyncio.create_task(self._work(handler), name=f"engine-worker-{slot}"))

    async def stop(self, grace: float = 0.0) -> None:
        """Take no new work; give running jobs ``grace`` seconds to finish, then cancel them.

        A canceled job keeps its state in the database and is resumed at the next start.
        """
        self._stopping = True
        if grace > 0 and self.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def _work(self, handler: JobHandler) -> None:
        while True:
            await self._open.wait()
            entry = await self._queue.get()
            if not self._open.is_set():  # paused while this worker waited for work
                self._queue.put_nowait(entry)
                await self._open.wait()
                continue
            if self._stopping:
                self._queue.put_nowait(entry)  # leave it for the next start
                return
            job_id = entry[2]
            if job_id not in self._queued:
                continue
            self._queued.discard(job_id)
            self.running.add(job_id)
            self._idle.clear()
            try:
                await handler(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a handler bug must not kill the worker
                log.exception("job %s: worker handler crashed", job_id)
            finally:
                self.running.discard(job_id)
                if not self.running:
                    self._idle.set()
