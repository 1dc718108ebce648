"""The job lifecycle: create a job, run it on the engine, store and publish its result, recover after a crash.

Each step commits the job's new state before doing what the state promises, so a process killed at any
point leaves a row from which ``recover()`` can finish the job: work that lived only in memory is run
again as a new attempt (same seed, so the same images), stored results are published again (an edit of
the same message, so the user sees it once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import statistics
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from PIL import Image

from bot.deadline import Deadline
from bot.fair_queue import QueueEntry
from bot.job_params import params_for_prompt, remixed_params
from bot.moderator import SYSTEM_ACTOR
from bot.prompt import ParsedPrompt, steps_for_quality, strength_for_image_weight
from bot.quotas import Admission, AdmissionRefused, QuotaService, format_duration
from bot.scheduler import Scheduler
from engine.base import (
    MAX_SEED,
    TILE_COUNT,
    CancelToken,
    Engine,
    EngineCancelled,
    EngineError,
    EngineFlagged,
    GenerationRequest,
    Operation,
    ProgressUpdate,
    engine_seconds_of,
    supported_operations,
    unsupported_message,
)
from engine.geometry import output_size
from engine.seeds import tile_seeds
from engine.sizes import size_for_aspect
from storage.audit import AuditRepository
from storage.image_store import ImageStore, ImageStoreError
from storage.images import ImageNotFound, encode_png
from storage.jobs import JobRepository, ResultFacts, StoredImage
from storage.models import Job, JobKind, as_utc
from storage.states import InvalidTransition, JobState

log = logging.getLogger(__name__)

T = TypeVar("T")

_PHASE = {
    JobState.DRAFT: "waiting",
    JobState.SUBMITTED: "waiting",
    JobState.QUEUED: "waiting in the queue",
    JobState.PROCESSING: "generating",
    JobState.GENERATED: "generating",
    JobState.STORING: "being stored",
}

STORE_FAILED_REASON = (
    "⚠️ The result could not be saved, so it was not posted. Nothing was charged; please try again."
)
"""What the user sees when the image store refused every attempt to upload a result."""

CRASHED_REASON = "Something went wrong while running this job. Nothing was charged; try again."
"""What the user sees when a job failed outside the engine (a database or storage error)."""

FLAGGED_REASON = "🚫 The safety filter flagged this result, so it was not posted. Nothing was charged."
"""What the user sees when the engine's safety checker refused a job (the job ends FAILED: no charge)."""

DEFAULT_GUIDANCE = 7.0
VARIATION_STRENGTH = 0.6
"""img2img strength of V1–V4: keeps the composition, changes the details (Midjourney's "strong" is ~0.75)."""


CHILD_OPERATIONS: dict[str, frozenset[Operation]] = {
    JobKind.UPSCALE: frozenset(),  # separation of a tile: no engine, no operation
    JobKind.VARIATION: frozenset({Operation.VARY_SUBTLE, Operation.VARY_STRONG}),
    JobKind.REROLL: frozenset(),
    JobKind.ENHANCE: frozenset({Operation.UPSCALE_SUBTLE, Operation.UPSCALE_CREATIVE}),
    JobKind.OUTPAINT: frozenset(op for op in Operation if op.is_outpaint),
}
"""The kinds of job a button makes, with the engine operations a single image's buttons may ask for."""

_PARENT_ONLY = frozenset(
    {"note", "n", "reply_to", "remixed", "mark_message", "awaiting_image", "replaced_message"}
)
"""Parent params about the parent's own message and queue (its note, links, marks, message moves)."""
_NOT_INHERITED = _PARENT_ONLY | {"init_image_key", "strength"}
"""Parent params that describe the parent only (also its image prompt and its img2img knobs)."""
_NOT_INHERITED_BY_REROLL = _PARENT_ONLY

MAX_ATTEMPTS = 3
"""Runs a job gets before it is given up: a job that took the process down this often (a CUDA fault, the
kernel's out-of-memory killer) ends FAILED at the next start instead of taking the bot down again."""

ADMISSION_TIMEOUT = 1.5
"""Seconds admission may take (the per-user lock included) when the caller gives no ``answer_by``: what is
left of an interaction's ``bot.deadline.ANSWER_BUDGET``."""


@dataclass(frozen=True)
class Origin:
    """Where a job's Discord message lives and how to edit it."""

    channel_id: int
    guild_id: int | None = None
    application_id: int | None = None
    interaction_token: str | None = None
    message_id: int | None = None


Acknowledge = Callable[[], Awaitable[Origin]]

LoadImage = Callable[[], Awaitable[str]]
"""Fetches, decodes and stores a job's image prompt; returns its key in the image store. Raises
``AdmissionRefused`` with a reason for the user when the image cannot be used."""

NOT_ACKNOWLEDGED = (
    "Discord did not accept the command's answer, so the job did not start. Nothing was charged."
)

IMAGE_NOT_LOADED = (
    "The bot restarted while it was loading your image, so this job did not start. "
    "Nothing was charged; please send it again."
)


class JobPresenter(Protocol):
    """Shows a job to its user (the Discord side implements it; tests may record calls)."""

    async def queued(self, job: Job, position: int | None) -> None: ...

    def progress(self, job: Job, update: ProgressUpdate) -> None:
        """Called for every engine step; must return at once (it throttles on its own)."""

    async def succeeded(self, job: Job, images: list[StoredImage]) -> None:
        """Post the result; raise to signal the result could not be posted."""

    async def failed(self, job: Job, reason: str) -> None: ...


@dataclass(frozen=True)
class JobDefaults:
    resolution: int
    steps: int
    model: str


@dataclass(frozen=True)
class Timeouts:
    """Seconds a job may stay in each phase before it ends TIMED_OUT (its reservation released).

    ``processing`` counts from the last progress the engine reported for the job (from the start of
    processing until the first report), so it bounds a stall, not a long run."""

    queue: float = 6 * 3600
    processing: float = 900
    storing: float = 300

    def limit_for(self, state: JobState) -> float | None:
        if state in (JobState.DRAFT, JobState.SUBMITTED, JobState.QUEUED):
            return self.queue
        if state in (JobState.PROCESSING, JobState.GENERATED):
            return self.processing
        if state == JobState.STORING:
            return self.storing
        return None


class JobService:
    def __init__(
        self,
        repo: JobRepository,
        store: ImageStore,
        engine: Engine,
        scheduler: Scheduler,
        defaults: JobDefaults,
        quotas: QuotaService,
        *,
        timeouts: Timeouts | None = None,
        rng: random.Random | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.max_attempts = max(1, max_attempts)
        self.repo = repo
        self.quotas = quotas
        self.store = store
        self.engine = engine
        self.scheduler = scheduler
        self.defaults = defaults
        self.presenter: JobPresenter | None = None
        self._rng = rng or random.SystemRandom()
        self._cancel_tokens: dict[str, CancelToken] = {}
        self._progress_at: dict[str, datetime] = {}
        """When each running job last reported progress (``repo.now``): its processing time limit
        counts from there, so a slow job that keeps moving is never ended; a stuck one still is."""
        self._end_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._recent_engine_seconds: deque[float] = deque(maxlen=20)

    # -- creating jobs -------------------------------------------------------------------------

    async def submit_imagine(
        self,
        user_id: int,
        acknowledge: Acknowledge,
        parsed: ParsedPrompt,
        user_name: str = "",
        mode: str | None = None,
        init_image_key: str | None = None,
        *,
        expected: Origin | None = None,
        load_image: LoadImage | None = None,
        answer_by: Deadline | None = None,
    ) -> Job:
        """Admit and queue a grid job (``init_image_key``: a stored image prompt).

        ``acknowledge`` is called once the job is admitted and saved (the Discord side defers the
        interaction and returns where the job's message is); ``expected`` is what is known of that place
        before (channel, interaction token), saved with the job so that a crash right after the
        acknowledgement loses nothing. Raises ``AdmissionRefused`` or ``TimeoutError`` before anything is
        saved, charged or acknowledged: the caller can still answer privately.

        ``load_image``: an image prompt still to be fetched. It is called only after the job is admitted,
        saved and acknowledged (a refused user's image is never fetched, and fetching may take longer
        than Discord's 3 s); if it raises, the saved job ends FAILED, uncharged, and the error is raised.
        """
        job = self._imagine_job(user_id, parsed, "" if load_image is not None else init_image_key)
        if load_image is not None:
            job.params = job.params.but(init_image_key=None, awaiting_image=True)
        return await self._submit(
            job,
            acknowledge,
            user_name,
            parsed.mode or mode,
            expected=expected,
            load_image=load_image,
            answer_by=answer_by,
        )

    async def discard_input_image(self, key: str) -> bool:
        """Delete a stored image prompt that no job references (its job was refused after the image was
        stored); True if it was deleted. An image a job uses is kept as long as that job's row."""
        if await self.repo.references_image(key):
            return False
        await self.store.delete(key)
        return True

    def _imagine_job(
        self, user_id: int, parsed: ParsedPrompt, init_image_key: str | None, seed: int | None = None
    ) -> Job:
        width, height = size_for_aspect(self.defaults.resolution, *parsed.aspect)
        params = params_for_prompt(parsed, base_steps=self.defaults.steps)
        job = Job(
            user_id=user_id,
            kind=JobKind.IMAGINE,
            prompt=parsed.text,
            negative_prompt=parsed.negative,
            width=width,
            height=height,
            steps=parsed.steps or steps_for_quality(parsed.quality, self.defaults.steps),
            seed=parsed.seed if parsed.seed is not None else (seed if seed is not None else self._new_seed()),
        )
        if init_image_key is not None:  # an image prompt: img2img from it, --iw sets how much it counts
            job.operation = Operation.IMG2IMG
            params = params.but(
                init_image_key=init_image_key, strength=strength_for_image_weight(parsed.image_weight)
            )
        job.params = params
        return job

    async def submit_child(
        self,
        parent: Job,
        kind: str,
        index: int | None,
        user_id: int,
        acknowledge: Acknowledge,
        *,
        operation: Operation | None = None,
        remix: ParsedPrompt | None = None,
        extra_params: dict[str, object] | None = None,
        expected: Origin | None = None,
        answer_by: Deadline | None = None,
    ) -> Job:
        """A job made from a button on ``parent``'s message.

        Grid buttons: U (``UPSCALE``, no engine), V (``VARIATION``, img2img) and 🔄 (``REROLL``). Buttons of
        a single image pass ``operation`` (``CHILD_OPERATIONS``): the job's size is the engine's real output
        size for that operation on the parent's image, so admission checks the tier's limit on it.
        ``remix``: the prompt as edited in Remix mode (replaces the parent's prompt and its knobs).
        """
        if kind not in CHILD_OPERATIONS:
            raise ValueError(f"unknown child kind {kind}")
        if operation is not None and operation not in CHILD_OPERATIONS[kind]:
            raise ValueError(f"operation {operation} does not fit a {kind} job")
        # 🔄 redoes the parent as it was (image prompt included); the others start from its image
        dropped = _NOT_INHERITED_BY_REROLL if kind == JobKind.REROLL else _NOT_INHERITED
        params = parent.params.without(*dropped)
        job = Job(
            user_id=user_id,
            kind=kind,
            prompt=parent.prompt,
            negative_prompt=parent.negative_prompt,
            params=params.but(**(extra_params or {})),
            parent_job_id=parent.id,
            parent_index=index,
            width=parent.width,
            height=parent.height,
            steps=parent.steps,
            seed=self._new_seed(),
        )
        if kind == JobKind.REROLL and params.init_image_key is not None:
            job.operation = parent.operation  # an image prompt is redone from the same image
        if remix is not None:
            self._apply_remix(job, remix)
        if operation is not None:
            if index is None:
                raise ValueError(f"{operation} needs the index of the parent's image")
            source = await self._stored_image(parent.id, index)
            job.operation = operation
            job.width, job.height = output_size(
                operation, source.width, source.height, (source.width, source.height)
            )
            job.params = job.params.but(n=1 if operation.is_upscale else TILE_COUNT)
        elif kind == JobKind.VARIATION:
            job.operation = Operation.IMG2IMG
            job.params = job.params.but(strength=VARIATION_STRENGTH)
        if kind == JobKind.UPSCALE and index is not None:
            job.seed = tile_seeds(parent.seed, index + 1)[index]
        # the clicker's own mode and tier (their /fast or /relax setting), not the parent's
        return await self._submit(job, acknowledge, expected=expected, answer_by=answer_by)

    def _apply_remix(self, job: Job, parsed: ParsedPrompt) -> None:
        """Remix mode: the edited prompt replaces the parent's text and the knobs it sets."""
        job.prompt, job.negative_prompt = parsed.text, parsed.negative
        job.params = remixed_params(job.params, parsed, base_steps=self.defaults.steps)
        if parsed.steps is not None or parsed.quality is not None:
            job.steps = parsed.steps or steps_for_quality(parsed.quality, self.defaults.steps)
        if parsed.seed is not None:
            job.seed = parsed.seed
        if job.kind == JobKind.REROLL and "ar" in parsed.given:
            job.width, job.height = size_for_aspect(self.defaults.resolution, *parsed.aspect)
            job.params = job.params.but(aspect=parsed.aspect)

    async def _stored_image(self, job_id: str, index: int) -> StoredImage:
        for image in await self.repo.images(job_id):
            if image.index == index:
                return image
        raise ValueError(f"job {job_id} has no image {index}")

    async def _submit(
        self,
        job: Job,
        acknowledge: Acknowledge,
        user_name: str = "",
        mode: str | None = None,
        *,
        expected: Origin | None = None,
        load_image: LoadImage | None = None,
        answer_by: Deadline | None = None,
    ) -> Job:
        """Admit, save (DRAFT, with its reservation), acknowledge, load its image prompt (if it has one
        still to load), then queue the job.

        The row is written *before* the acknowledgement: once the user sees "thinking…", a crash at any
        point leaves a row that the next start recovers (``_recover_one``); the presenter finds the
        acknowledged message from the interaction token when its id was not saved yet. If Discord refuses
        the acknowledgement, the row ends FAILED with its reservation released, and the error is raised;
        a task cancelled meanwhile (the bot stopping) leaves the row to the next start's recovery.
        """
        job.model = self.defaults.model
        operation = Operation(job.operation)
        if job.kind != JobKind.UPSCALE and operation not in supported_operations(self.engine):
            raise AdmissionRefused(unsupported_message(operation))  # before anything is saved or charged
        lock = self.quotas.lock(job.user_id)
        # waiting for the lock counts too; ``answer_by``: what is left of the interaction's budget
        deadline = answer_by if answer_by is not None else Deadline(ADMISSION_TIMEOUT)
        async with asyncio.timeout(deadline.left()):  # cancelling a lock's waiter is safe
            await lock.acquire()
        try:
            admission = await deadline.wait(self._admission(job, user_name, mode))
            if expected is not None:
                _place(job, expected)
            job.tier, job.mode, job.priority = admission.tier.name, admission.mode, admission.tier.priority
            job.estimate_seconds = admission.estimate_seconds
            if admission.note:
                job.params = job.params.but(note=admission.note)
            # one moment, from the repository's clock, for the job and its reservation: the reservation,
            # release and charge then all fall in the quota period the job was accepted in
            job.created_at = accepted = self.repo.now()
            job = await self.repo.create(job, ledger=self.quotas.reservation(job), at=accepted)
        finally:
            lock.release()
        try:
            _place(job, await acknowledge())
            if load_image is not None:
                key = await load_image()
                job.params = job.params.but(init_image_key=key, awaiting_image=False)
        except AdmissionRefused as refusal:  # the image could not be used: the reason is the user's
            await self._abandon_draft(job, str(refusal))
            raise
        except Exception:  # Discord refused the acknowledgement (a cancelled task, the bot stopping,
            await self._abandon_draft(job, NOT_ACKNOWLEDGED)  # leaves the row to the next start)
            raise
        try:
            job = await self.repo.transition(
                job.id,
                JobState.SUBMITTED,
                guild_id=job.guild_id,
                channel_id=job.channel_id,
                message_id=job.message_id,
                application_id=job.application_id,
                interaction_token=job.interaction_token,
                params=job.params,
            )
        except InvalidTransition:
            # a restarted process recovered the row meanwhile (it queues the job, or fails it if it was
            # still waiting for its image): only say where its message is
            await self.repo.update_fields(job.id, message_id=job.message_id)
            if job.params.init_image_key:
                await self.discard_input_image(job.params.init_image_key)
            return await self.repo.get(job.id)
        return await self._enqueue(job)

    async def _abandon_draft(self, job: Job, reason: str) -> None:
        """The command could not be acknowledged, or its image prompt not used: end the saved job FAILED
        with ``reason``, its reservation released, silently (the caller answers the user if Discord lets
        it). The row stays, as every ended job does: ``/jobs`` lists it with the reason."""
        try:
            await self._end(job, JobState.FAILED, reason)
        except InvalidTransition:
            pass  # a restarted process took it over

    async def _admission(self, job: Job, user_name: str, mode: str | None) -> Admission:
        return await self.quotas.admit(
            job, mode, uses_engine=job.kind != JobKind.UPSCALE, user_name=user_name
        )

    async def _enqueue(self, job: Job) -> Job:
        job = await self.repo.transition(job.id, JobState.QUEUED)
        self._schedule(job)
        await self._present("queued", job, self.scheduler.position(job.id))
        return job

    def _schedule(self, job: Job) -> None:
        """Into the fair queue, aged from when the job was first accepted (a restart keeps its age)."""
        created = as_utc(job.created_at)
        entry = QueueEntry(
            job_id=job.id,
            user_id=str(job.user_id),
            tier=job.tier,
            priority=job.priority,
            mode=job.mode,
            enqueued_at=created.timestamp(),
        )
        self.scheduler.submit(entry, max_concurrent=self.quotas.tiers.get(job.tier).max_concurrent)

    def _new_seed(self) -> int:
        return self._rng.randint(0, MAX_SEED)

    # -- running jobs --------------------------------------------------------------------------

    async def run(self, job_id: str) -> None:
        """The scheduler's handler: one job from QUEUED to a terminal state.

        Any unexpected error on the way (a database error on a transition, a failure storing or posting
        the images) ends the job FAILED at once, so it never sits QUEUED outside the queue or STORING,
        holding its reservation and a queue slot until a time limit passes.
        """
        try:
            await self._run(job_id)
        except Exception:
            log.exception("job %s: crashed outside the engine", job_id)
            await self._fail_after_crash(job_id)
        finally:
            self._cancel_tokens.pop(job_id, None)

    async def _fail_after_crash(self, job_id: str) -> None:
        try:
            job = await self.repo.get(job_id)
            if not JobState(job.state).terminal:
                await self._finish_unsuccessfully(job, JobState.FAILED, CRASHED_REASON)
        except Exception:
            log.exception("job %s: could not be marked failed either", job_id)

    async def _run(self, job_id: str) -> None:
        job = await self.repo.get(job_id)
        if job.state != JobState.QUEUED:
            return  # canceled (or finished by another path) while it waited
        # the token exists before the job is PROCESSING, so a /cancel landing as it starts is never lost
        token = self._cancel_tokens.setdefault(job_id, CancelToken())
        try:
            job = await self.repo.transition(job_id, JobState.PROCESSING, engine=self.engine.name)
        except InvalidTransition:
            return  # canceled or timed out a moment ago
        started = time.perf_counter()
        try:
            images = await self._generate(job, token)
            if token.cancelled:  # jobs without engine work (U) never look at the token themselves
                raise EngineCancelled("canceled")
        except EngineCancelled:
            await self._finish_unsuccessfully(job, JobState.CANCELED, "Canceled.")
            return
        except EngineFlagged:
            await self._finish_unsuccessfully(job, JobState.FAILED, FLAGGED_REASON)
            return
        except EngineError as error:
            await self._finish_unsuccessfully(job, JobState.FAILED, str(error) or "The engine failed.")
            return
        except Exception:
            log.exception("job %s: generation crashed", job_id)
            await self._finish_unsuccessfully(job, JobState.FAILED, "Something went wrong while generating.")
            return
        finally:
            self._cancel_tokens.pop(job_id, None)
            self._progress_at.pop(job_id, None)
        engine_seconds = self._charged_seconds(job, images, time.perf_counter() - started)
        try:
            job = await self.repo.transition(job_id, JobState.GENERATED, engine_seconds=engine_seconds)
        except InvalidTransition:
            log.info("job %s: ended (%s) while generating; its images are dropped", job_id, job.state)
            return
        if engine_seconds:
            self.quotas.cost.observe(job, engine_seconds, len(images))
            self._recent_engine_seconds.append(engine_seconds)
        await self._store_and_publish(job, images)

    @staticmethod
    def _charged_seconds(job: Job, images: list[Image.Image], wall: float) -> float:
        """Engine time to charge: the engine's own share when it gives one (a batched job pays its share of
        the batch, not the batch's whole time nor its wait in the engine), else the wall time; 0 for U."""
        if job.kind == JobKind.UPSCALE:
            return 0.0
        share = engine_seconds_of(images)
        return wall if share is None else min(share, wall)

    async def _generate(self, job: Job, token: CancelToken) -> list[Image.Image]:
        if job.kind == JobKind.UPSCALE:
            return [await self._parent_image(job)]
        request = await self._request_for(job)

        def on_progress(update: ProgressUpdate) -> None:
            self._progress_at[job.id] = self.repo.now()
            # a canceled or timed-out job has ended (or is ending): a late update must not show "(NN%)"
            if self.presenter is not None and not token.cancelled:
                self.presenter.progress(job, update)

        return await self.engine.generate(request, on_progress, token)

    async def _request_for(self, job: Job) -> GenerationRequest:
        """The engine request a job row describes: its operation, sizes and seed, and the engine knobs in
        ``params`` (set when the job was made, so a retried or recovered job asks for exactly the same)."""
        params = job.params
        operation = Operation(job.operation)
        init_image = await self._init_image(job) if operation.needs_image else None
        parts = params.prompt_parts
        return GenerationRequest(
            prompt=_or(params.engine_prompt, job.prompt),
            # with weights the engine reads the parts; the negative prompt is then --no alone
            negative_prompt=job.negative_prompt
            if parts
            else _or(params.engine_negative, job.negative_prompt),
            width=job.width,
            height=job.height,
            steps=job.steps,
            seed=job.seed,
            guidance=_or(params.guidance, DEFAULT_GUIDANCE),
            operation=operation,
            init_image=init_image,
            strength=_or(params.strength, VARIATION_STRENGTH),
            model=params.model,
            tile=params.tile,
            n=_or(params.n, TILE_COUNT),
            stop=_or(params.stop, 1.0),
            chaos=_or(params.chaos, 0),
            prompt_parts=parts,
        )

    async def _init_image(self, job: Job) -> Image.Image:
        """The image an image operation starts from: an image prompt, or the parent's tile."""
        key = job.params.init_image_key
        if key:
            try:
                return await self.store.get_image(key)
            except ImageNotFound:
                raise EngineError("The image prompt of this job no longer exists.") from None
        return await self._parent_image(job)

    async def _parent_image(self, job: Job) -> Image.Image:
        if job.parent_job_id is None or job.parent_index is None:
            raise EngineError("This job has no source image.")
        images = await self.repo.images(job.parent_job_id)
        matching = [image for image in images if image.index == job.parent_index]
        if not matching:
            raise EngineError("The source image of this job no longer exists.")
        return await self.store.get_image(matching[0].key)

    async def _store_and_publish(self, job: Job, images: list[Image.Image]) -> None:
        try:
            job = await self.repo.transition(job.id, JobState.STORING)
        except InvalidTransition:
            return  # canceled or timed out meanwhile
        try:
            stored = await self._store(job, images)
        except (ImageStoreError, OSError) as error:
            # each upload was already retried (the S3 client's retry mode); no row names a partial result
            log.warning("job %s: could not store the result: %s", job.id, error)
            await self._finish_unsuccessfully(job, JobState.FAILED, STORE_FAILED_REASON)
            return
        await self._publish(job, stored)

    async def _store(self, job: Job, images: list[Image.Image]) -> list[StoredImage]:
        """Every image into the store, then one database write naming them all (with what made them)."""
        seeds = tile_seeds(job.seed, len(images))
        stored = []
        for index, image in enumerate(images):
            data = await asyncio.to_thread(encode_png, image)
            key = await self.store.put(data)
            location = self.store.location(key)
            stored.append(
                StoredImage(index, key, image.width, image.height, seeds[index], location, len(data))
            )
        facts = ResultFacts(
            prompt_sha256=hashlib.sha256(job.prompt.encode()).hexdigest(),
            model=job.params.model or job.model,
            generation_seconds=job.engine_seconds,
        )
        await self.repo.replace_images(job.id, stored, facts)
        return stored

    async def _publish(self, job: Job, stored: list[StoredImage]) -> None:
        """Post the result and end SUCCEEDED, under the job's end lock: a job that ended meanwhile (timed
        out while storing) posts nothing, and the time limit never ends a job whose result is being posted,
        so a job ends one way and its message matches the row."""
        async with self._end_lock(job.id):
            current = await self.repo.get(job.id)
            if current.state != JobState.STORING:
                log.info(
                    "job %s: ended (%s) before its result was posted; nothing posted", job.id, current.state
                )
                return
            try:
                if self.presenter is not None:
                    await self.presenter.succeeded(job, stored)
            except Exception:
                log.exception("job %s: could not post the result", job.id)
                await self._end(job, JobState.FAILED, "Could not post the result.")
                return
            await self._end(job, JobState.SUCCEEDED)
        log.info("job %s: succeeded", job.id)

    def _end_lock(self, job_id: str) -> asyncio.Lock:
        """Held while a job's result is posted and while the time limit ends it (kept while anyone holds it)."""
        lock = self._end_locks.get(job_id)
        if lock is None:
            lock = self._end_locks[job_id] = asyncio.Lock()
        return lock

    async def _end(self, job: Job, state: JobState, reason: str | None = None) -> Job:
        """The terminal transition, with the quota settlement in the same transaction."""
        ledger = self.quotas.settlement(job, state, job.engine_seconds)
        return await self.repo.transition(job.id, state, error=reason, ledger=ledger)

    async def _finish_unsuccessfully(self, job: Job, state: JobState, reason: str) -> None:
        try:
            job = await self._end(job, state, reason)
        except InvalidTransition:
            return  # someone else ended it first
        log.info("job %s: %s (%s)", job.id, state, reason)
        await self._present("failed", job, reason)

    def eta_seconds(self, position: int | None) -> float | None:
        """Rough wait for the job at ``position`` in line: jobs ahead x the median recent job time / slots."""
        if position is None:
            return None
        typical = statistics.median(self._recent_engine_seconds) if self._recent_engine_seconds else 10.0
        return position * typical / max(1, self.engine.slots)

    # -- canceling -----------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once, or a running one at its next denoising step."""
        token = self._cancel_tokens.get(job_id)
        if token is not None:
            token.cancel()
            return await self.repo.get(job_id)
        self.scheduler.discard(job_id)
        job = await self.repo.get(job_id)
        if not JobState(job.state).terminal and job.state in (
            JobState.DRAFT,
            JobState.SUBMITTED,
            JobState.QUEUED,
        ):
            await self._finish_unsuccessfully(job, JobState.CANCELED, "Canceled.")
        return await self.repo.get(job_id)

    # -- per-state time limits ------------------------------------------------------------------------

    async def enforce_timeouts(self, now: datetime) -> list[str]:
        """End every job that stayed too long in its state as TIMED_OUT; returns their ids.

        The engine's token is canceled *before* the failure is shown, so no late progress update can
        follow "Timed out". A job whose result is being posted right now is left to finish posting.
        """
        ended = []
        for job in await self.repo.unfinished():
            lock = self._end_lock(job.id)
            if lock.locked():
                continue  # its result is being posted: it ends SUCCEEDED or FAILED by that path
            async with lock:
                job = await self.repo.get(job.id)  # the row as it is now, not as the round started
                state = JobState(job.state)
                limit = self.timeouts.limit_for(state)
                since = as_utc(job.state_since)
                progress = self._progress_at.get(job.id) if state == JobState.PROCESSING else None
                if progress is not None:
                    since = max(since, as_utc(progress))
                if limit is None or (now - since).total_seconds() <= limit:
                    continue
                self.scheduler.discard(job.id)
                token = self._cancel_tokens.get(job.id)
                if token is not None:
                    token.cancel()  # first: the engine stops at its next step and its progress is dropped
                reason = (
                    f"Timed out: it made no progress for more than {format_duration(limit)} while generating."
                    if progress is not None
                    else f"Timed out: it spent more than {format_duration(limit)} {_PHASE[state]}."
                )
                await self._finish_unsuccessfully(job, JobState.TIMED_OUT, reason)
                ended.append(job.id)
        return ended

    # -- recovery after a restart --------------------------------------------------------------

    async def recover(self) -> int:
        """Finish or requeue every job a previous process left unfinished. Returns how many."""
        jobs = await self.repo.unfinished()
        for job in jobs:
            try:
                await self._recover_one(job)
            except Exception:
                log.exception("job %s: recovery failed", job.id)
        return len(jobs)

    async def _recover_one(self, job: Job) -> None:
        state = JobState(job.state)
        log.info("job %s: recovering from %s", job.id, state)
        if state == JobState.STORING:
            stored = await self.repo.images(job.id)
            if stored:
                await self._publish(job, stored)
                return
        if state == JobState.DRAFT and job.params.awaiting_image:
            await self._finish_unsuccessfully(job, JobState.FAILED, IMAGE_NOT_LOADED)
            return
        if state == JobState.DRAFT:
            job = await self.repo.transition(job.id, JobState.SUBMITTED, note="recovered")
            state = JobState.SUBMITTED
        if state == JobState.SUBMITTED:
            await self._enqueue(job)
            return
        if state == JobState.QUEUED:
            self._schedule(job)
            return
        if job.attempts + 1 >= self.max_attempts:
            await self._give_up(job)
            return
        job = await self.repo.transition(job.id, JobState.QUEUED, retry=True, note="process restarted")
        self._schedule(job)

    async def _give_up(self, job: Job) -> None:
        """Past the attempt cap: FAILED (reservation released) with a clear message and an audit line."""
        runs = job.attempts + 1
        reason = (
            f"This job was interrupted {runs} times while it ran (the bot stopped during it), "
            "so it was not tried again. Nothing was charged."
        )
        log.warning("job %s: giving up after %d runs (MAX_ATTEMPTS=%d)", job.id, runs, self.max_attempts)
        await self._finish_unsuccessfully(job, JobState.FAILED, reason)
        await AuditRepository(self.repo.database).record(
            SYSTEM_ACTOR, "job given up", job.id, owner=job.user_id, runs=runs, state=str(job.state)
        )

    async def _present(self, event: str, job: Job, argument: object) -> None:
        if self.presenter is None:
            return
        try:
            await getattr(self.presenter, event)(job, argument)
        except Exception:
            log.warning("job %s: could not show %s", job.id, event, exc_info=True)


def _place(job: Job, origin: Origin) -> None:
    """Set the job's columns that say where its Discord message is."""
    job.guild_id, job.channel_id, job.message_id = origin.guild_id, origin.channel_id, origin.message_id
    job.application_id, job.interaction_token = origin.application_id, origin.interaction_token


def _or(value: T | None, default: T) -> T:
    """``value`` unless it is unset (None); unlike ``or``, keeps 0, 0.0 and ""."""
    return default if value is None else value
