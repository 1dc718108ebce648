"""The engine server's jobs: a FIFO queue feeding ``engine.slots`` workers, states, events and images.

A job lives in memory only. States are PRODUCT.md's names, with its progress numbers:
QUEUED 30 → PROCESSING 30–85 by step → GENERATED 85 → STORING 95 (PNG-encoding the results) →
SUCCEEDED 100, or FAILED / CANCELED with ``error = {"code", "message"}``. A job the server cannot
finish (engine error, out of memory, the server stopping, the model failing to load) always ends FAILED
with a reason; nothing is left silent. Error codes: ``canceled``, ``out_of_memory``, ``flagged`` (the
safety checker refused the result; a client must not retry it elsewhere), ``engine_error``,
``engine_unavailable`` (retryable on another engine), ``internal_error``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from PIL import Image

from engine.base import (
    CancelToken,
    Engine,
    EngineCancelled,
    EngineError,
    EngineFlagged,
    EngineOutOfMemory,
    GenerationRequest,
    ProgressUpdate,
    engine_seconds_of,
)

log = logging.getLogger(__name__)


class ServerState(StrEnum):
    QUEUED = "QUEUED"  # accepted, waiting for a free engine slot
    PROCESSING = "PROCESSING"  # denoising; step/total and previews flow
    GENERATED = "GENERATED"  # images made, not yet encoded
    STORING = "STORING"  # encoding the PNGs into the server's image store
    SUCCEEDED = "SUCCEEDED"  # ``images`` links are ready
    FAILED = "FAILED"  # terminal, with ``error``
    TIMED_OUT = "TIMED_OUT"  # terminal (not produced by this server today; part of the vocabulary)
    CANCELED = "CANCELED"  # terminal: DELETE /images/jobs/{id}

    @property
    def terminal(self) -> bool:
        return self in (
            ServerState.SUCCEEDED,
            ServerState.FAILED,
            ServerState.TIMED_OUT,
            ServerState.CANCELED,
        )


STATE_PROGRESS = {
    ServerState.QUEUED: 30,
    ServerState.PROCESSING: 30,
    ServerState.GENERATED: 85,
    ServerState.STORING: 95,
    ServerState.SUCCEEDED: 100,
}


def processing_progress(step: int, total: int) -> int:
    """30–85 by step, as PRODUCT.md's table says."""
    return 30 + int(55 * step / max(1, total))


@dataclass(eq=False)
class ServerJob:
    id: str
    request: GenerationRequest
    state: ServerState = ServerState.QUEUED
    progress: int = 30
    step: int = 0
    total: int = 0
    error: dict[str, str] | None = None
    images: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    engine_seconds: float | None = None  # the engine's share for this job (ENGINE_SECONDS), else run time
    cancel: CancelToken = field(default_factory=CancelToken)
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": str(self.state),
            "progress": self.progress,
            "step": self.step,
            "total": self.total,
            "error": self.error,
            "images": [f"/images/{key}" for key in self.images],
            "seed": self.request.seed,
            "n": self.request.n,
            "engine_seconds": None if self.engine_seconds is None else round(self.engine_seconds, 4),
        }


class JobManager:
    """Submits, runs, cancels and remembers jobs for one engine."""

    def __init__(self, engine: Engine, *, max_jobs_kept: int = 1000) -> None:
        self.engine = engine
        self.max_jobs_kept = max_jobs_kept
        self.jobs: OrderedDict[str, ServerJob] = OrderedDict()
        self.images: dict[str, bytes] = {}
        self._idempotency: dict[str, str] = {}
        self._queue: asyncio.Queue[ServerJob] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.images_made = 0
        self.processing_seconds = 0.0
        self.steps_done = 0
        self.step_seconds_total = 0.0

    # -- API ----------------------------------------------------------------------------------------

    def submit(
        self, request: GenerationRequest, idempotency_key: str | None = None
    ) -> tuple[ServerJob, bool]:
        """The job for ``request`` and whether it is new (False: the idempotency key was seen before)."""
        if idempotency_key is not None:
            known = self._idempotency.get(idempotency_key)
            if known is not None and known in self.jobs:
                return self.jobs[known], False
        job = ServerJob(id=uuid.uuid4().hex, request=request)
        self.jobs[job.id] = job
        if idempotency_key is not None:
            self._idempotency[idempotency_key] = job.id
        self._queue.put_nowait(job)
        self._forget_old()
        log.info("job %s: queued seed=%s n=%s op=%s", job.id, request.seed, request.n, request.operation)
        return job, True

    def get(self, job_id: str) -> ServerJob | None:
        return self.jobs.get(job_id)

    def cancel(self, job: ServerJob) -> None:
        """A queued job ends CANCELED at once; a running one at its next denoising step."""
        job.cancel.cancel()
        if job.state == ServerState.QUEUED:
            self._set(job, ServerState.CANCELED, error={"code": "canceled", "message": "Canceled."})

    def fail_all_queued(self, message: str) -> None:
        for job in list(self.jobs.values()):
            if not job.state.terminal:
                job.cancel.cancel()
                self._set(job, ServerState.FAILED, error={"code": "engine_unavailable", "message": message})

    def subscribe(self, job: ServerJob) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        job.subscribers.add(queue)
        return queue

    @property
    def queue_length(self) -> int:
        return sum(1 for job in self.jobs.values() if job.state == ServerState.QUEUED)

    def counts(self) -> dict[str, int]:
        counts = {str(state): 0 for state in ServerState}
        for job in self.jobs.values():
            counts[str(job.state)] += 1
        return counts

    def start(self) -> None:
        for slot in range(max(1, int(getattr(self.engine, "slots", 1)))):
            self._workers.append(asyncio.create_task(self._work(), name=f"engine-server-worker-{slot}"))

    async def stop(self) -> None:
        """Cancel the workers; every unfinished job ends FAILED (the server is stopping)."""
        for job in self.jobs.values():
            if not job.state.terminal:
                job.cancel.cancel()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self.fail_all_queued("the engine server stopped")

    # -- workers ------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            if job.state != ServerState.QUEUED:
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                if not job.state.terminal:
                    self._set(
                        job,
                        ServerState.FAILED,
                        error={"code": "engine_unavailable", "message": "the engine server stopped"},
                    )
                raise
            except Exception:  # a bug must not kill the worker or leave the job silent
                log.exception("job %s: crashed", job.id)
                if not job.state.terminal:
                    self._set(
                        job, ServerState.FAILED, error={"code": "internal_error", "message": "internal error"}
                    )

    async def _run(self, job: ServerJob) -> None:
        job.started = time.monotonic()
        self._set(job, ServerState.PROCESSING)
        last = [time.monotonic()]

        def on_progress(update: ProgressUpdate) -> None:
            now = time.monotonic()
            self.steps_done += 1
            self.step_seconds_total += now - last[0]
            last[0] = now
            if job.state.terminal:
                return
            job.step, job.total = update.step, update.total
            job.progress = processing_progress(update.step, update.total)
            self._publish(job, "progress", preview=update.preview)

        try:
            images = await self.engine.generate(job.request, on_progress, job.cancel)
        except EngineCancelled:
            self._set(job, ServerState.CANCELED, error={"code": "canceled", "message": "Canceled."})
            return
        except EngineOutOfMemory as error:
            self._set(job, ServerState.FAILED, error={"code": "out_of_memory", "message": str(error)})
            return
        except EngineFlagged as error:  # the content, not the engine: clients must not retry it elsewhere
            self._set(job, ServerState.FAILED, error={"code": "flagged", "message": str(error)})
            return
        except EngineError as error:
            self._set(
                job,
                ServerState.FAILED,
                error={"code": "engine_error", "message": str(error) or "engine error"},
            )
            return
        if job.state.terminal:
            return
        self._set(job, ServerState.GENERATED)
        self._set(job, ServerState.STORING)
        encoded = await asyncio.to_thread(lambda: [_png(image) for image in images])
        keys = []
        for data in encoded:
            key = hashlib.sha256(data).hexdigest()[:32] + ".png"
            self.images[key] = data
            keys.append(key)
        job.images = keys
        share = engine_seconds_of(images)
        job.engine_seconds = share if share is not None else time.monotonic() - job.started
        self.images_made += len(keys)
        self.processing_seconds += time.monotonic() - job.started
        self._set(job, ServerState.SUCCEEDED)

    # -- state and events -----------------------------------------------------------------------------

    def _set(self, job: ServerJob, state: ServerState, *, error: dict[str, str] | None = None) -> None:
        if job.state.terminal:
            return
        job.state = state
        if error is not None:
            job.error = error
        if state in STATE_PROGRESS:
            job.progress = max(job.progress, STATE_PROGRESS[state])
        if state.terminal:
            job.finished = time.monotonic()
            log.info(
                "job %s: %s%s", job.id, state, f" ({error['code']}: {error['message']})" if error else ""
            )
        self._publish(job, "state")

    def _publish(self, job: ServerJob, kind: str, preview: bytes | None = None) -> None:
        if not job.subscribers:
            return
        event = {"type": kind, **job.snapshot()}
        event["preview"] = base64.b64encode(preview).decode() if preview is not None else None
        for queue in list(job.subscribers):
            if queue.full() and kind == "progress":
                continue  # a slow listener misses previews, never state changes
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def _forget_old(self) -> None:
        while len(self.jobs) > self.max_jobs_kept:
            oldest = next((j for j in self.jobs.values() if j.state.terminal), None)
            if oldest is None:
                return
            del self.jobs[oldest.id]
            for key in oldest.images:
                if not any(key in other.images for other in self.jobs.values()):
                    self.images.pop(key, None)
            for idem, job_id in list(self._idempotency.items()):
                if job_id == oldest.id:
                    del self._idempotency[idem]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
