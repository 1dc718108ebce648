"""The engine server's jobs: a FIFO queue feeding ``engine.slots`` workers, states, events and images.

Jobs are rows of a database (``engine.server.store``); only unfinished jobs are also held in memory (with
their request, cancel token, listeners and latest preview). A finished job keeps nothing in memory: its
row and result PNGs are read back from the database until ``results_ttl`` passes (its input image is
deleted when it ends). On start, ``recover`` queues again every job the last process left unfinished
(a job interrupted while running starts over with the same seed; after ``MAX_ATTEMPTS`` it fails).

States are PRODUCT.md's names, with its progress numbers:
QUEUED 30 → PROCESSING 30–85 by step → GENERATED 85 → STORING 95 (PNG-encoding the results) →
SUCCEEDED 100, or FAILED / TIMED_OUT / CANCELED with ``error = {"code", "message"}``. Each unfinished
state has a time limit (``Limits``); a job past it ends TIMED_OUT with the reason. Error codes:
``canceled``, ``out_of_memory``, ``flagged`` (the safety checker refused the result; a client must not
retry it elsewhere), ``engine_error``, ``engine_unavailable`` (retryable on another engine), ``timed_out``,
``internal_error``.

Identical requests (``cache_key``: model, operation, prompts, size, steps, guidance, seed, … and the input
image's hash) are answered from an earlier, unexpired result without touching the engine, unless the
request says ``cache=false``; such a job is SUCCEEDED at once with ``cache_hit: true`` and
``engine_seconds: 0``. The cache is the job table itself, so it is bounded by the retention period and
``keep_finished``, and survives restarts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    Operation,
    ProgressUpdate,
    engine_seconds_of,
)
from engine.server.metrics import ServerMetrics
from engine.server.store import JobStore, aware, expiry
from engine.server.webhooks import WebhookSender
from engine.wire import JobRequest
from storage.server_jobs import EngineServerJob

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""A job whose server died under it this many times fails instead of starting over again."""


class ServerState(StrEnum):
    QUEUED = "QUEUED"  # accepted, waiting for a free engine slot
    PROCESSING = "PROCESSING"  # denoising; step/total and previews flow
    GENERATED = "GENERATED"  # images made, not yet encoded
    STORING = "STORING"  # encoding the PNGs into the server's image store
    SUCCEEDED = "SUCCEEDED"  # ``images`` links are ready
    FAILED = "FAILED"  # terminal, with ``error``
    TIMED_OUT = "TIMED_OUT"  # terminal: a state lasted longer than its limit
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


@dataclass(frozen=True)
class Limits:
    """Seconds a job may stay in each unfinished state (0 = no limit)."""

    queued: float = 3600.0
    processing: float = 900.0
    storing: float = 120.0

    def of(self, state: ServerState) -> float:
        if state == ServerState.QUEUED:
            return self.queued
        if state == ServerState.PROCESSING:
            return self.processing
        if state in (ServerState.GENERATED, ServerState.STORING):
            return self.storing
        return 0.0


@dataclass(eq=False)
class ServerJob:
    """An unfinished job, in memory while it may still run."""

    id: str
    request: GenerationRequest
    callback_url: str | None = None
    webhook_events: tuple[str, ...] = ("completed",)
    cache_key: str | None = None
    state: ServerState = ServerState.QUEUED
    progress: int = 30
    step: int = 0
    total: int = 0
    attempts: int = 0
    error: dict[str, str] | None = None
    images: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    state_since: float = field(default_factory=time.time)
    finished: float | None = None
    engine_seconds: float | None = None
    ending: bool = False  # a terminal state is being written
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one state write at a time, in order
    preview: bytes | None = None  # the latest preview while it runs (A1111's progress.current_image)
    cancel: CancelToken = field(default_factory=CancelToken)
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

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
            "cache_hit": False,
            "created": self.created,
            "finished": self.finished,
        }


def row_snapshot(row: EngineServerJob) -> dict[str, Any]:
    error = None if row.error_code is None else {"code": row.error_code, "message": row.error_message or ""}
    return {
        "id": row.id,
        "state": row.state,
        "progress": row.progress,
        "step": row.step,
        "total": row.total,
        "error": error,
        "images": [f"/images/{key}" for key in row.images],
        "seed": row.request.get("seed"),
        "n": row.request.get("n"),
        "engine_seconds": None if row.engine_seconds is None else round(row.engine_seconds, 4),
        "cache_hit": row.cache_hit,
        "created": aware(row.created_at).timestamp(),
        "finished": None if row.finished_at is None else aware(row.finished_at).timestamp(),
    }


def cache_key(request: GenerationRequest, init_png: bytes | None, default_model: str) -> str:
    """What makes two requests give the same pixels (with the same engine and model)."""
    parts = [
        request.model or default_model,
        request.operation.value,
        request.prompt,
        request.negative_prompt,
        request.width,
        request.height,
        request.steps,
        request.guidance,
        request.seed,
        request.n,
        request.strength,
        request.tile,
        request.stop,
        request.chaos,
        [list(part) for part in request.prompt_parts],
        None if init_png is None else hashlib.sha256(init_png).hexdigest(),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wall(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class JobManager:
    """Submits, runs, cancels, times out and remembers jobs for one engine."""

    def __init__(
        self,
        engine: Engine,
        store: JobStore,
        *,
        model_name: str = "",
        results_ttl: float = 86400.0,
        keep_finished: int = 1000,
        limits: Limits | None = None,
        webhooks: WebhookSender | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.engine, self.store = engine, store
        self.model_name = model_name
        self.results_ttl, self.keep_finished = results_ttl, keep_finished
        self.limits = limits or Limits()
        self.webhooks = webhooks
        self.metrics = metrics
        self.active: dict[str, ServerJob] = {}
        self.finished_counts: dict[str, int] = {}
        self._queue: asyncio.Queue[ServerJob] = asyncio.Queue()
        self._submit_lock = asyncio.Lock()
        self._workers: list[asyncio.Task[None]] = []
        self._reaper: asyncio.Task[None] | None = None

    # -- startup -------------------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Queue again the jobs a previous process left unfinished; resend pending webhooks."""
        counts = await self.store.counts()
        self.finished_counts = {s: counts.get(s, 0) for s in map(str, ServerState) if ServerState(s).terminal}
        recovered = 0
        for row in await self.store.unfinished():
            init: Image.Image | None = None
            if row.init_image is not None:
                with Image.open(io.BytesIO(row.init_image)) as stored:
                    init = stored.convert("RGB")
            spec = row.request
            job = ServerJob(
                id=row.id,
                request=_generation(spec, init),
                callback_url=spec.get("callback_url"),
                webhook_events=tuple(spec.get("webhook_events") or ("completed",)),
                cache_key=row.cache_key,
                attempts=row.attempts,
                created=aware(row.created_at).timestamp(),
                state_since=aware(row.state_since).timestamp(),
            )
            self.active[job.id] = job
            if row.state != ServerState.QUEUED:  # it was running when the last process died
                if job.attempts >= MAX_ATTEMPTS:
                    await self._end(
                        job,
                        ServerState.FAILED,
                        {
                            "code": "engine_error",
                            "message": f"the engine server stopped under it {job.attempts} times",
                        },
                    )
                    continue
                job.state_since = time.time()
                await self.store.update(job.id, state="QUEUED", state_since=_wall(job.state_since))
            self._queue.put_nowait(job)
            recovered += 1
        if self.webhooks is not None:
            for row in await self.store.pending_webhooks():
                url = row.request.get("callback_url")
                if url:
                    self._send_completed(row.id, url, row_snapshot(row))
        if recovered:
            log.info("recovered %d unfinished jobs", recovered)
        return recovered

    def start(self) -> None:
        """Start the workers (once the engine is loaded) and the time-limit reaper."""
        for slot in range(max(1, int(getattr(self.engine, "slots", 1)))):
            self._workers.append(asyncio.create_task(self._work(), name=f"engine-server-worker-{slot}"))
        self.start_reaper()

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="engine-server-reaper")

    async def stop(self) -> None:
        """Stop the workers. Unfinished jobs stay unfinished in the database: the next start runs them."""
        tasks = [*self._workers, *([self._reaper] if self._reaper else [])]
        for job in self.active.values():
            if job.state != ServerState.QUEUED:
                job.cancel.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._reaper = None
        if self.webhooks is not None:
            await self.webhooks.close()

    # -- API ---------------------------------------------------------------------------------------------

    async def submit(
        self,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
        init_png: bytes | None = None,
        spec: JobRequest | None = None,
        use_cache: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """The job for ``request`` as a snapshot, and whether it is new (False: the idempotency key was seen)."""
        async with self._submit_lock:
            if idempotency_key is not None:
                known = await self.store.by_idempotency_key(idempotency_key)
                if known is not None:
                    return await self.snapshot(known.id) or row_snapshot(known), False
            key = cache_key(request, init_png, self.model_name)
            record = _record(request, spec)
            job = ServerJob(
                id=uuid.uuid4().hex,
                request=request,
                callback_url=spec.callback_url if spec else None,
                webhook_events=tuple(spec.webhook_events) if spec else ("completed",),
                cache_key=key,
            )
            if use_cache:
                cached = await self.store.cached(key)
                if self.metrics is not None:
                    self.metrics.cache_answered(cached is not None)
                if cached is not None:
                    return await self._answer_from_cache(job, cached, idempotency_key, record), True
            await self.store.insert(
                EngineServerJob(
                    id=job.id,
                    state=str(job.state),
                    idempotency_key=idempotency_key,
                    request=record,
                    init_image=init_png,
                    cache_key=key,
                    created_at=_wall(job.created),
                    state_since=_wall(job.state_since),
                )
            )
            self.active[job.id] = job
            self._queue.put_nowait(job)
        log.info("job %s: queued seed=%s n=%s op=%s", job.id, request.seed, request.n, request.operation)
        return job.snapshot(), True

    async def snapshot(self, job_id: str) -> dict[str, Any] | None:
        job = self.active.get(job_id)
        if job is not None:
            return job.snapshot()
        row = await self.store.get(job_id)
        return None if row is None else row_snapshot(row)

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """A queued job ends CANCELED at once; a running one at its next denoising step."""
        job = self.active.get(job_id)
        if job is None:
            return await self.snapshot(job_id)
        job.cancel.cancel()
        if job.state == ServerState.QUEUED:
            await self._end(job, ServerState.CANCELED, {"code": "canceled", "message": "Canceled."})
        return job.snapshot()

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """The job's snapshot once it is finished, or as it stands after ``timeout`` seconds."""
        job = self.active.get(job_id)
        if job is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return await self.snapshot(job_id)

    async def fail_all_queued(self, message: str) -> None:
        for job in list(self.active.values()):
            job.cancel.cancel()
            await self._end(job, ServerState.FAILED, {"code": "engine_unavailable", "message": message})

    def subscribe(self, job: ServerJob) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        job.subscribers.add(queue)
        return queue

    def running(self) -> list[ServerJob]:
        return [job for job in self.active.values() if job.state != ServerState.QUEUED]

    @property
    def queue_length(self) -> int:
        return sum(1 for job in self.active.values() if job.state == ServerState.QUEUED)

    def counts(self) -> dict[str, int]:
        counts = {str(state): 0 for state in ServerState}
        counts.update(self.finished_counts)
        for job in self.active.values():
            counts[str(job.state)] += 1
        return counts

    async def image(self, key: str) -> bytes | None:
        return await self.store.image(key)

    async def keep_image(self, data: bytes) -> str:
        """Store an extra result PNG (an edit's masked composite) for ``results_ttl``; its key."""
        key = hashlib.sha256(data).hexdigest()[:32] + ".png"
        await self.store.put_images([(key, data)], expiry(self.results_ttl))
        return key

    # -- workers -------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            if job.state != ServerState.QUEUED or job.ending:
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise  # the server is stopping: the job stays unfinished in the database
            except Exception:  # a bug must not kill the worker or leave the job silent
                log.exception("job %s: crashed", job.id)
                await self._end(
                    job, ServerState.FAILED, {"code": "internal_error", "message": "internal error"}
                )

    async def _run(self, job: ServerJob) -> None:
        job.attempts += 1
        if self.metrics is not None:
            self.metrics.queue_wait.observe(max(0.0, time.time() - job.state_since))
        await self._set(job, ServerState.PROCESSING, attempts=job.attempts)
        started = time.monotonic()
        self._webhook(job, "start")

        def on_progress(update: ProgressUpdate) -> None:
            if job.state.terminal:
                return
            job.step, job.total = update.step, update.total
            job.progress = processing_progress(update.step, update.total)
            if update.preview is not None:
                job.preview = update.preview
            self._publish(job, "progress", preview=update.preview)
            self._webhook(job, "progress")

        try:
            images = await self.engine.generate(job.request, on_progress, job.cancel)
        except EngineCancelled:
            if not job.state.terminal:
                await self._end(job, ServerState.CANCELED, {"code": "canceled", "message": "Canceled."})
            return
        except EngineOutOfMemory as error:
            await self._end(job, ServerState.FAILED, {"code": "out_of_memory", "message": str(error)})
            return
        except EngineFlagged as error:  # the content, not the engine: clients must not retry it elsewhere
            await self._end(job, ServerState.FAILED, {"code": "flagged", "message": str(error)})
            return
        except EngineError as error:
            await self._end(
                job, ServerState.FAILED, {"code": "engine_error", "message": str(error) or "engine error"}
            )
            return
        if job.state.terminal:
            return
        await self._set(job, ServerState.GENERATED, persist=False)
        await self._set(job, ServerState.STORING)
        encoded = await asyncio.to_thread(lambda: [png(image) for image in images])
        pairs = [(hashlib.sha256(data).hexdigest()[:32] + ".png", data) for data in encoded]
        share = engine_seconds_of(images)
        seconds = time.monotonic() - started
        job.engine_seconds = share if share is not None else seconds
        if self.metrics is not None:
            self.metrics.job_generated(len(pairs), seconds)
        await self._end(job, ServerState.SUCCEEDED, images=pairs)

    async def _reap(self) -> None:
        """Time limits, and retention: every ``tick`` seconds."""
        limits = [
            limit for limit in (self.limits.queued, self.limits.processing, self.limits.storing) if limit
        ]
        tick = min(5.0, max(0.05, min(limits, default=20.0) / 4))
        last_purge = 0.0
        while True:
            now = time.time()
            for job in list(self.active.values()):
                limit = self.limits.of(job.state)
                if limit and now - job.state_since > limit:
                    job.cancel.cancel()
                    await self._end(
                        job,
                        ServerState.TIMED_OUT,
                        {
                            "code": "timed_out",
                            "message": f"the job was {job.state.lower()} for more than {limit:g} s",
                        },
                    )
            if now - last_purge > 60:
                last_purge = now
                try:
                    await self.store.purge(self.keep_finished)
                except Exception:
                    log.exception("purging expired jobs failed")
            await asyncio.sleep(tick)

    # -- state, events, webhooks -----------------------------------------------------------------------------

    async def _set(self, job: ServerJob, state: ServerState, *, persist: bool = True, **values: Any) -> None:
        if job.state.terminal or job.ending:
            return
        job.state, job.state_since = state, time.time()
        if state in STATE_PROGRESS:
            job.progress = max(job.progress, STATE_PROGRESS[state])
        if persist:
            async with job.writing:
                if job.ending:
                    return
                await self.store.update(
                    job.id,
                    state=str(state),
                    progress=job.progress,
                    step=job.step,
                    total=job.total,
                    state_since=_wall(job.state_since),
                    **values,
                )
        self._publish(job, "state")

    async def _end(
        self,
        job: ServerJob,
        state: ServerState,
        error: dict[str, str] | None = None,
        *,
        images: list[tuple[str, bytes]] | None = None,
        cache_hit: bool = False,
    ) -> None:
        """The one way into a terminal state: written (with the images) first, then announced."""
        if job.state.terminal or job.ending:
            return
        job.ending = True  # the first ending wins; readers see the old state until it is written
        finished = time.time()
        keys = [key for key, _ in images or []]
        progress = max(job.progress, STATE_PROGRESS.get(state, job.progress))
        async with job.writing:  # after a state write in flight, never before it
            await self.store.finish(
                job.id,
                {
                    "state": str(state),
                    "progress": progress,
                    "step": job.step,
                    "total": job.total,
                    "error_code": None if error is None else error["code"],
                    "error_message": None if error is None else error["message"][:1000],
                    "images": keys,
                    "engine_seconds": job.engine_seconds,
                    "cache_hit": cache_hit,
                    "finished_at": _wall(finished),
                    "state_since": _wall(finished),
                    "webhook_pending": job.callback_url is not None,
                },
                images or [],
                expiry(self.results_ttl),
            )
        job.state, job.error, job.finished, job.images, job.progress = state, error, finished, keys, progress
        job.preview = None
        self.active.pop(job.id, None)
        self.finished_counts[str(state)] = self.finished_counts.get(str(state), 0) + 1
        log.info("job %s: %s%s", job.id, state, f" ({error['code']}: {error['message']})" if error else "")
        self._publish(job, "state")
        job.done.set()
        if job.callback_url is not None:
            self._send_completed(job.id, job.callback_url, job.snapshot())

    async def _answer_from_cache(
        self, job: ServerJob, cached: EngineServerJob, idempotency_key: str | None, record: dict[str, Any]
    ) -> dict[str, Any]:
        job.engine_seconds = 0.0
        job.step = job.total = job.request.steps
        await self.store.insert(
            EngineServerJob(
                id=job.id,
                state=str(job.state),
                idempotency_key=idempotency_key,
                request=record,
                cache_key=job.cache_key,
                created_at=_wall(job.created),
                state_since=_wall(job.state_since),
            )
        )
        self.active[job.id] = job
        await self._end(
            job, ServerState.SUCCEEDED, images=[(key, b"") for key in cached.images], cache_hit=True
        )
        log.info("job %s: answered from the cache (job %s)", job.id, cached.id)
        snapshot = await self.snapshot(job.id)
        assert snapshot is not None
        return snapshot

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

    def _webhook(self, job: ServerJob, event: str) -> None:
        if self.webhooks is None or job.callback_url is None or event not in job.webhook_events:
            return
        self.webhooks.send(job.callback_url, event, job.snapshot(), retry=False)

    def _send_completed(self, job_id: str, url: str, snapshot: dict[str, Any]) -> None:
        if self.webhooks is None:
            return

        async def done(_delivered: bool) -> None:
            await self.store.update(job_id, webhook_pending=False)

        self.webhooks.send(url, "completed", snapshot, on_done=done)


def _record(request: GenerationRequest, spec: JobRequest | None) -> dict[str, Any]:
    """What the job row keeps of its request: enough to run it again (its image is kept beside it)."""
    record: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "operation": request.operation.value,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "seed": request.seed,
        "n": request.n,
        "guidance": request.guidance,
        "strength": request.strength,
        "stop": request.stop,
        "model": request.model,
        "tile": request.tile,
        "chaos": request.chaos,
        "prompt_parts": [list(part) for part in request.prompt_parts],
    }
    if spec is not None and spec.callback_url is not None:
        record["callback_url"] = spec.callback_url
        record["webhook_events"] = list(spec.webhook_events)
    return record


def _generation(record: dict[str, Any], init_image: Image.Image | None) -> GenerationRequest:
    return GenerationRequest(
        prompt=record["prompt"],
        negative_prompt=record.get("negative_prompt", ""),
        operation=Operation(record.get("operation", "txt2img")),
        width=int(record["width"]),
        height=int(record["height"]),
        steps=int(record["steps"]),
        seed=int(record["seed"]),
        n=int(record.get("n", 1)),
        guidance=float(record.get("guidance", 7.0)),
        strength=float(record.get("strength", 0.6)),
        stop=float(record.get("stop", 1.0)),
        model=record.get("model"),
        tile=bool(record.get("tile", False)),
        chaos=int(record.get("chaos", 0)),
        prompt_parts=tuple((str(text), float(weight)) for text, weight in record.get("prompt_parts", [])),
        init_image=init_image,
    )
