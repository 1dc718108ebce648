"""Which jobs share a denoising call: the engine's queue, batch windows, cancel and out-of-memory splits.

Torch-free on purpose (unit-tested without a model, ``tests/engine/test_batching.py``); the pipeline driver
(``engine.driver``) runs what this module hands it.

- **Batches.** ``JobQueue.take`` pops the oldest waiting job and, when batching is on (``max_batch > 1``) and
  the job has a batch key, waits up to ``window`` seconds for jobs with an *equal* key, then returns them
  together (at most ``max_batch``). A job whose key is None always runs alone. Jobs keep their queue order.
- **Windows of prompt length.** ``groups_by`` splits one batch into calls whose conditioning has the same
  length (padding never depends on what a job was batched with).
- **Cancel.** ``stop_cancelled`` is asked at every denoising step: a cancelled job of a batch is answered at
  once and the others go on; when every unfinished job is cancelled it raises ``Interrupted`` to end the call.
- **Out of memory.** ``run_in_halves`` retries a batch that ran out of memory as two halves (recursively), so
  a too-large batch costs time, not jobs; a single job that still runs out of memory gets the error.
- **Batch size.** ``auto_batch_size`` turns free device memory and the image size into a batch size
  (``ENGINE_BATCH_MAX=auto``); ``bucket`` pads row counts to a few fixed sizes for compiled models.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """Raised inside a step callback to stop denoising at once (no final VAE decode)."""


@dataclass(eq=False)
class Job(Generic[T]):
    """One ``generate`` call waiting for, or in, a batch. ``outcome`` is set once; ``deliver`` hands it to the
    caller's event loop (thread-safe, at most once)."""

    request: Any
    model: str
    report: Callable[[Any], None] | None
    is_cancelled: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    key: Hashable | None = None
    outcome: T | BaseException | None = field(default=None)
    delivered: bool = False

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def finish(self, outcome: T | BaseException) -> None:
        if self.outcome is None:
            self.outcome = outcome

    def deliver(self) -> None:
        if self.delivered or self.outcome is None:
            return
        self.delivered = True
        outcome = self.outcome

        def resolve() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody is waiting
            self.loop.call_soon_threadsafe(resolve)


class JobQueue(Generic[T]):
    """The jobs waiting for the engine's worker thread, and how they are grouped into batches."""

    def __init__(
        self,
        max_batch: int = 1,
        window: float = 0.025,
        cancelled: Callable[[Job[T]], BaseException] | None = None,
    ) -> None:
        """``cancelled(job)``: the outcome of a job found cancelled before its run (default: ``Interrupted``)."""
        self.max_batch = max(1, max_batch)
        self.window = window
        self._cancelled = cancelled or (lambda job: Interrupted("cancelled"))
        self._cond = threading.Condition()
        self._pending: deque[Job[T]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, job: object) -> bool:
        with self._cond:
            return job in self._pending

    def put(self, job: Job[T]) -> None:
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()

    def withdraw(self, job: Job[T]) -> bool:
        """Remove a job that has not started; False when it is already in a batch (or done)."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                return True
            return False

    def open(self) -> None:
        with self._cond:
            self._closed = False

    def drain(self) -> list[Job[T]]:
        """Return (and forget) the jobs still waiting, leaving the queue open (their worker died)."""
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
        return left

    def close(self) -> list[Job[T]]:
        """Wake the worker to stop; returns (and forgets) the jobs still waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            left = list(self._pending)
            self._pending.clear()
        return left

    def take(self) -> list[Job[T]] | None:
        """Block until a batch is ready (see the module doc); None once the queue is closed."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._pending.popleft()
                if first.is_cancelled():  # the one check before the run
                    first.finish(self._cancelled(first))
                    first.deliver()
                    continue
                break
            batch = [first]
            if first.key is None or self.max_batch <= 1:
                return batch
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch and not self._closed:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.key == first.key:
                        self._pending.remove(job)
                        batch.append(job)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch


def stop_cancelled(jobs: Sequence[Job[T]], cancelled: Callable[[Job[T]], BaseException]) -> None:
    """At a step: answer each newly cancelled job with ``cancelled(job)``; raise ``Interrupted`` instead when
    no unfinished job would be left (the whole call stops; the caller answers them)."""
    running = [job for job in jobs if not job.done]
    for job in running:
        if job.is_cancelled():
            if len(jobs) == 1 or all(other.done or other is job for other in running):
                raise Interrupted
            job.finish(cancelled(job))
            job.deliver()  # the others go on


def groups_by(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[int]]:
    """Indices of ``items`` grouped by ``key``, groups in order of first appearance, order kept within."""
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    return list(groups.values())


def run_in_halves(
    jobs: list[T],
    attempt: Callable[[list[T]], None],
    is_out_of_memory: Callable[[BaseException], bool],
    on_split: Callable[[int], None] | None = None,
) -> None:
    """``attempt(jobs)``; when it runs out of memory with more than one job, free memory (``on_split(size)``)
    and attempt each half the same way. Other errors, and out of memory with one job, propagate."""
    try:
        attempt(jobs)
    except Exception as error:
        if not is_out_of_memory(error) or len(jobs) <= 1:
            raise
        if on_split is not None:
            on_split(len(jobs))
        half = len(jobs) // 2
        run_in_halves(jobs[:half], attempt, is_out_of_memory, on_split)
        run_in_halves(jobs[half:], attempt, is_out_of_memory, on_split)


AUTO_BATCH_CAP = 8
"""``auto`` never batches more than this many jobs: on an H200, SD1.5 512² gains 5 % from 8 to 16 prompts per
call (GPU.md) while every job of a batch waits for the slowest; an explicit ``ENGINE_BATCH_MAX`` can go higher."""
SD_IMAGE_BYTES_512 = 1.0 * 2**30
"""Working memory of one 512² image in a guided fp16 SD-class call (two UNet rows plus its VAE decode),
rounded up from diffusers' published memory figures; it grows with the pixel count."""
MEMORY_HEADROOM = 0.75
"""Only this fraction of the free memory is planned for; the allocator, previews and other jobs need the rest."""


def auto_batch_size(
    free_bytes: int | None,
    width: int,
    height: int,
    images_per_job: int = 1,
    *,
    cap: int = AUTO_BATCH_CAP,
    image_bytes_512: float = SD_IMAGE_BYTES_512,
) -> int:
    """Jobs per call for ``ENGINE_BATCH_MAX=auto``: 1 without a GPU (``free_bytes`` None), else as many jobs of
    ``images_per_job`` images at ``width`` x ``height`` as fit in the planned share of free memory, from 1 to
    ``cap``. An underestimate is caught at run time: an out-of-memory batch is split (``run_in_halves``)."""
    if free_bytes is None or free_bytes <= 0:
        return 1
    per_job = image_bytes_512 * (width * height) / (512 * 512) * max(1, images_per_job)
    return max(1, min(cap, int(free_bytes * MEMORY_HEADROOM // per_job)))


def bucket(rows: int, largest: int) -> int:
    """The smallest power of two ≥ ``rows`` (1, 2, 4, 8, …), or ``rows`` itself beyond ``largest``: a compiled
    UNet sees only these batch sizes, so serving never recompiles for a new size."""
    size = 1
    while size < rows:
        size *= 2
    return size if size <= max(rows, largest) else rows


def buckets(largest: int) -> list[int]:
    """Every bucket up to and including the one of ``largest`` rows (compiled at start-up)."""
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(sizes[-1] * 2)
    return sizes
