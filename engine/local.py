"""The in-process diffusers engine: a short pipeline driver with one worker thread and dynamic batching.

``generate`` validates the request, hands it to the engine's worker thread and awaits the result; the
event loop keeps serving Discord meanwhile. The worker takes the oldest waiting job and, when batching is
on (``max_batch > 1``), waits up to ``batch_window`` seconds for *compatible* jobs (same model, output
size, steps, guidance, operation and strength, tile mode, ``--stop`` — see ``batch_key``) and runs them as one
pipeline call with per-job prompts, negatives and seeds. From the pipeline's ``callback_on_step_end`` it
checks every job's cancel token, builds each job's latent preview every N steps and hands a
``ProgressUpdate`` to that job's loop with ``call_soon_threadsafe`` — ``on_progress`` always runs on the
caller's loop thread. One cancelled job of a batch is answered at once and the others go on; an
out-of-memory error splits the batch in halves and retries them instead of failing the jobs.

``slots = max_batch``: the bot's scheduler runs that many workers, so that many jobs can reach the engine
at once and be batched; the scheduler's priority order decides which jobs those are.

Seeds: every image row has its own CPU ``torch.Generator`` seeded with ``tile_seeds(seed, n)[i]``, and the
init images of image operations are VAE-encoded deterministically (the latent mean) per job, so a job
gives the same images alone, in a grid or in a batch (up to batched-float tolerance), on any device.

Operations (numbers in ``engine.base``): VARY_* and IMG2IMG are img2img at fixed/own strengths;
UPSCALE_* resize 2x (Lanczos) then run img2img, in overlapping tiles blended with linear ramps when the
output is larger than ``upscale_tile``; outpainting (ZOOM_OUT_*, MAKE_SQUARE, PAN_*) puts the original on
a larger canvas (``engine.geometry``) and runs the inpainting pipeline: with a real inpainting UNet
(9 input channels) when the model has one, else — the fallback — diffusers' latent-blending inpainting
with the model's own 4-channel UNet (the known area is re-noised from the original at every step); either
way the original pixels are pasted back unchanged. ``tile=True`` switches every conv layer of the UNet and
VAE to circular padding for the call (seamless textures).

Safety (optional, ``safety_checker=``; see ``engine.safety``): after a batch is made, the checker looks at
every job's images; a job with any flagged image ends with ``EngineFlagged`` (no image is returned), while
the other jobs of the batch keep theirs. It applies to every operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.base import (
    ENGINE_SECONDS,
    UPSCALE_CREATIVE_STRENGTH,
    UPSCALE_SUBTLE_STRENGTH,
    VARY_STRONG_STRENGTH,
    VARY_SUBTLE_STRENGTH,
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineFlagged,
    EngineOutOfMemory,
    GenerationRequest,
    Operation,
    ProgressCallback,
    ProgressUpdate,
)
from engine.conditioning import Row, conditioning_arguments, prompt_encoder, prompt_windows, rows_for
from engine.geometry import (
    blend_weights,
    outpaint_canvas,
    outpaint_layout,
    outpaint_mask,
    output_size,
    paste_original,
    tile_boxes,
)
from engine.loading import img2img_pipeline, load_pipeline, model_family, resolve_device
from engine.previews import (
    LATENT_RGB,
    PreviewCadence,
    X0Capture,
    latent_preview,
    latent_rgb_factors,
    load_preview_decoder,
    taesd_preview,
)
from engine.registry import LRUCache, ModelRegistry, ModelSpec
from engine.safety import SafetyChecker, load_safety_checker, obscure_preview, safety_checker_source
from engine.seeds import tile_seeds
from engine.sizes import SIZE_MULTIPLE

log = logging.getLogger(__name__)

Report = Callable[[ProgressUpdate], None]

MAX_SIDE = 4096
"""No output side may exceed this (upscales of upscales included)."""

WORKER_DIED = "The image engine stopped unexpectedly while this job waited or ran; please try again."
"""The error of every job the engine's worker thread held or that waited for it when it died."""

_IMG2IMG_OPERATIONS = (Operation.IMG2IMG, Operation.VARY_SUBTLE, Operation.VARY_STRONG)


class _Interrupted(Exception):
    """Raised inside the pipeline's step callback to stop denoising at once (no final VAE decode)."""


def strength_of(request: GenerationRequest) -> float:
    """The img2img strength an operation runs at (1.0 for text-to-image and outpainting)."""
    return {
        Operation.IMG2IMG: request.strength,
        Operation.VARY_SUBTLE: VARY_SUBTLE_STRENGTH,
        Operation.VARY_STRONG: VARY_STRONG_STRENGTH,
        Operation.UPSCALE_SUBTLE: UPSCALE_SUBTLE_STRENGTH,
        Operation.UPSCALE_CREATIVE: UPSCALE_CREATIVE_STRENGTH,
    }.get(request.operation, 1.0)


def effective_steps(request: GenerationRequest) -> int:
    """Steps passed to the pipeline: fixed-strength operations get at least one real denoising step."""
    strength = strength_of(request)
    if request.operation in (Operation.TXT2IMG, Operation.IMG2IMG) or strength >= 1.0:
        return request.steps
    return max(request.steps, math.ceil(1 / strength))


def stop_step(total: int, stop: float) -> int:
    """The last denoising step run for ``--stop`` (``ceil(total * stop)``, at least 1)."""
    return max(1, math.ceil(total * stop - 1e-9))


def final_size(request: GenerationRequest) -> tuple[int, int]:
    init = request.init_image.size if request.init_image is not None else None
    return output_size(request.operation, request.width, request.height, init)


def batch_key(request: GenerationRequest, model: str) -> tuple[Any, ...] | None:
    """Requests with equal keys can share one denoising call; None = always alone.

    Guidance is not in the key (each row gets its own scale, ``engine.conditioning.RowGuidance``), only
    whether classifier-free guidance is on; prompts, weights, chaos and seeds are per row too.
    """
    if request.operation not in (Operation.TXT2IMG, *_IMG2IMG_OPERATIONS):
        return None
    return (
        model,
        request.width,
        request.height,
        effective_steps(request),
        request.guidance > 1.0,  # CFG on/off
        request.operation,
        strength_of(request),
        request.tile,
        request.stop,
    )


@dataclass
class _Loaded:
    """One model's pipelines (sharing components) and its preview helpers."""

    spec: ModelSpec
    txt2img: Any
    img2img: Any
    inpaint: Any
    capture: X0Capture
    factors: torch.Tensor
    native_inpaint: bool
    encoder: Any = None  # compel's prompt encoder (engine.conditioning.prompt_encoder)

    def size_bytes(self) -> int:
        total = 0
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(self.txt2img, name, None)
            if isinstance(module, torch.nn.Module):
                total += sum(p.numel() * p.element_size() for p in module.parameters())
        return total


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    model: str
    report: Report | None
    is_cancelled: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Image.Image]]
    outcome: list[Image.Image] | BaseException | None = None
    delivered: bool = False
    key: tuple[Any, ...] | None = field(default=None)

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def finish(self, outcome: list[Image.Image] | BaseException) -> None:
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


class LocalDiffusersEngine:
    """Runs diffusers Stable Diffusion pipelines in this process (``slots = max_batch``)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        preview_every: int = 1,
        name: str = "local",
        config_folder: str | None = None,
        dtype: torch.dtype | None = None,
        registry: ModelRegistry | None = None,
        max_batch: int = 1,
        batch_window: float = 0.025,
        cache_bytes: int = 0,
        upscale_tile: int = 768,
        channels_last: bool = False,
        compile_unet: bool = False,
        preview_decoder: Any = None,
        safety_checker: Any = None,
    ) -> None:
        """``preview_decoder``: an ``AutoencoderTiny`` (TAESD) or a path / hub id of one, to decode the
        previews instead of the latent→RGB matrix (see ``engine.previews``); None or ``"latent-rgb"``: the matrix.
        ``safety_checker``: an ``engine.safety.SafetyChecker`` or a path / hub id of one; a job with a flagged
        image fails with ``EngineFlagged`` (see ``engine.safety``); None, ``""`` or ``"off"``: no checker.
        """
        self.name = name
        self.model = model
        self.device = device
        self.cadence = PreviewCadence(preview_every)
        if registry is None:
            registry = ModelRegistry.single(model, config_folder=config_folder)
        elif model in registry:
            registry = ModelRegistry(list(registry.specs.values()), model)
        self.registry = registry
        self.max_batch = max(1, max_batch)
        self.slots = self.max_batch
        self.batch_window = batch_window
        self.upscale_tile = max(64, upscale_tile - upscale_tile % SIZE_MULTIPLE)
        self.channels_last = channels_last
        self.compile_unet = compile_unet
        self._preview_source = None if preview_decoder in (None, LATENT_RGB) else preview_decoder
        self._preview_decoder: Any = None  # loaded with the first model (on its device)
        self._safety_source = safety_checker_source(safety_checker)
        self._safety_checker: SafetyChecker | None = None  # loaded with the first model (on its device)
        self._dtype = dtype
        self._cache: LRUCache[str, _Loaded] = LRUCache(cache_bytes, _Loaded.size_bytes, self._release)
        self._lock = threading.Lock()  # held by the worker thread while it runs a batch
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._worker: threading.Thread | None = None
        self._in_batch: list[_Job] = []  # the batch the worker is running (failed if the worker dies)
        self._stopping = False
        self._started = False
        self.stats = EngineStats()

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> LocalDiffusersEngine:
        """Build from ``engine.settings.EngineSettings`` (or any object with the same attributes)."""
        from engine.registry import load_registry

        registry = None
        if getattr(settings, "models_file", None):
            registry = load_registry(settings.models_file, default_source=settings.model)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(
            getattr(settings, "engine_dtype", "auto")
        )
        values: dict[str, Any] = dict(
            preview_every=getattr(settings, "engine_preview_every", 1),
            registry=registry,
            dtype=dtype,
            max_batch=getattr(settings, "engine_batch_max", 1),
            batch_window=getattr(settings, "engine_batch_window_ms", 25.0) / 1000,
            cache_bytes=int(getattr(settings, "engine_model_cache_gb", 0.0) * 2**30),
            upscale_tile=getattr(settings, "engine_upscale_tile", 768),
            channels_last=getattr(settings, "engine_channels_last", False),
            compile_unet=getattr(settings, "engine_torch_compile", False),
            preview_decoder=getattr(settings, "engine_preview_decoder", LATENT_RGB),
            safety_checker=getattr(settings, "engine_safety_checker", None),
        )
        values.update(overrides)
        return cls(settings.model, settings.device, **values)

    # -- public API --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the default model in a worker thread (loading takes seconds to minutes)."""
        if not self._started:
            await asyncio.to_thread(self._pipelines, None)
            self._started = True
        with self._cond:
            self._stopping = False
            self._ensure_worker()

    async def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.join)
        for job in list(self._pending):
            job.finish(EngineError("the engine stopped"))
            job.deliver()
        self._pending.clear()
        await asyncio.to_thread(self._unload)
        self._started = False

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        """Make ``request.n`` RGB images of exactly ``final_size(request)``."""
        if not self._started or self._stopping:
            raise EngineError("the local engine is not started")
        _validate(request)
        spec = self.registry.get(request.model)
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()  # our awaiting task was cancelled: stop the work too

        def is_cancelled() -> bool:
            return abandoned.is_set() or (cancel is not None and cancel.cancelled)

        report: Report | None = None
        if on_progress is not None:
            callback = on_progress

            def report(update: ProgressUpdate) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening
                    loop.call_soon_threadsafe(callback, update)

        job = _Job(request, spec.alias, report, is_cancelled, loop, loop.create_future())
        job.key = batch_key(request, spec.alias)
        with self._cond:
            self._ensure_worker()  # a dead worker is replaced before the job waits for it
            self._pending.append(job)
            self._cond.notify_all()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            abandoned.set()
            with self._cond:
                if job in self._pending:  # never started: nothing to wait for
                    self._pending.remove(job)
                    raise
            with contextlib.suppress(BaseException):
                await job.future  # return only once the worker has really let go of it
            raise

    def model_spec(self, alias: str | None = None) -> ModelSpec:
        """The registry entry (defaults: resolution, steps, guidance) of a model alias."""
        return self.registry.get(alias)

    @property
    def queue_length(self) -> int:
        return len(self._pending)

    # -- worker thread -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._in_batch = batch
            with self._lock:
                self._run_batch(batch)
            for job in batch:
                job.deliver()
            self._in_batch = []

    # -- worker health ---------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        """Start the worker thread if there is none or it died (call with ``_cond`` held)."""
        if self._worker is not None and self._worker.is_alive():
            return
        if self._worker is not None:
            log.error("engine worker thread %s is dead; starting a new one", self._worker.name)
        self._worker = threading.Thread(target=self._serve, name=f"engine-{self.name}", daemon=True)
        self._worker.start()

    def _serve(self) -> None:
        """The worker thread's body: ``_work``, and if that ever dies, fail every job it held or that waits
        (their callers would wait forever) with a message; the next ``generate`` starts a new worker."""
        try:
            self._work()
        except BaseException:
            log.exception("engine worker thread died")
            with self._cond:
                orphans = [*self._in_batch, *self._pending]
                self._pending.clear()
                self._in_batch = []
                if self._worker is threading.current_thread():
                    self._worker = None
            for job in orphans:
                job.finish(EngineError(WORKER_DIED))
                job.deliver()

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._pending.popleft()
                if first.is_cancelled():  # the one check before the run
                    first.finish(EngineCancelled("cancelled"))
                    first.deliver()
                    continue
                break
            batch = [first]
            if first.key is None or self.max_batch <= 1:
                return batch
            deadline = time.monotonic() + self.batch_window
            while len(batch) < self.max_batch and not self._stopping:
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

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.done]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self._denoise(live)
            flagged = self._safety_flags(live, results)
        except _Interrupted:
            for job in live:
                log.info("generation cancelled seed=%s", job.request.seed)
                job.finish(EngineCancelled("cancelled"))
            return
        except Exception as error:
            if _is_out_of_memory(error):
                _free_device_memory()
                if len(live) > 1:
                    half = len(live) // 2
                    log.warning(
                        "out of memory at batch %s: splitting into %s + %s", len(live), half, len(live) - half
                    )
                    self.stats.oom_splits += 1
                    self._run_batch(live[:half])
                    self._run_batch(live[half:])
                    return
                request = live[0].request
                log.warning("out of memory n=%s size=%sx%s", request.n, request.width, request.height)
                live[0].finish(
                    EngineOutOfMemory(
                        f"out of memory making {request.n} image(s) at {request.width}x{request.height}"
                    )
                )
                return
            if isinstance(error, EngineError):
                for job in live:
                    job.finish(error)
                return
            log.exception("generation failed seeds=%s", [job.request.seed for job in live])
            for job in live:
                job.finish(EngineError(f"image generation failed ({type(error).__name__})"))
            return
        elapsed = time.perf_counter() - started
        rows_made = sum(len(result) for result in results)
        images = 0
        for job, result, refused in zip(live, results, flagged, strict=True):
            if job.done:
                continue
            if refused:
                job.finish(EngineFlagged())
                continue
            share = elapsed * len(result) / max(1, rows_made)  # the batch's time split by image rows
            for image in result:
                image.info[ENGINE_SECONDS] = share
            job.finish(result)
            images += len(result)
        self.stats.record(images, elapsed, effective_steps(live[0].request))

    def _safety_flags(self, jobs: list[_Job], results: list[list[Image.Image]]) -> list[bool]:
        """Per job: did the safety checker flag any of its images? (All False without a checker.)"""
        checker = self._safety_checker
        if checker is None:
            return [False] * len(jobs)
        checked = [j for j, job in enumerate(jobs) if not job.done]
        verdicts = iter(checker.flags([image for j in checked for image in results[j]]))
        flagged = [False] * len(jobs)
        for j in checked:
            flagged[j] = any([next(verdicts) for _ in results[j]])
            if flagged[j]:
                request = jobs[j].request
                log.info("safety checker flagged a job seed=%s operation=%s", request.seed, request.operation)
        return flagged

    def _denoise(self, jobs: list[_Job]) -> list[list[Image.Image]]:
        first = jobs[0].request
        loaded = self._pipelines(jobs[0].model)
        with seamless(loaded.txt2img, first.tile):
            if first.operation.is_upscale:
                return [self._upscale(loaded, jobs[0])]
            if first.operation.is_outpaint:
                return [self._outpaint(loaded, jobs[0])]
            return self._by_prompt_length(loaded, jobs)

    def _by_prompt_length(self, loaded: _Loaded, jobs: list[_Job]) -> list[list[Image.Image]]:
        """One call per conditioning length (long prompts), so padding never depends on the batch."""
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(prompt_windows(loaded.encoder, job.request), []).append(index)
        if len(groups) == 1:
            return self._txt2img_or_img2img(loaded, jobs)
        results: list[list[Image.Image]] = [[] for _ in jobs]
        for indices in groups.values():
            try:
                if all(jobs[i].is_cancelled() for i in indices):  # while an earlier call ran
                    raise _Interrupted
                made = self._txt2img_or_img2img(loaded, [jobs[i] for i in indices])
            except _Interrupted:  # every job of this call was cancelled; the other calls go on
                for index in indices:
                    jobs[index].finish(EngineCancelled("cancelled"))
                    jobs[index].deliver()
                continue
            for index, images in zip(indices, made, strict=True):
                results[index] = images
        return results

    def _step_callback(
        self,
        loaded: _Loaded,
        jobs: list[_Job],
        rows: list[int],
        *,
        step_offset: int = 0,
        total: int | None = None,
        previews: bool = True,
        stop: float = 1.0,
    ) -> Callable[..., dict[str, Any]]:
        """``callback_on_step_end`` for a batch whose job ``j`` starts at latent row ``rows[j]``.

        ``stop < 1`` (``--stop``): after step ``ceil(total * stop)`` the latents are replaced by that
        step's predicted x0 (the current latents when the scheduler gives none) and the pipeline's
        interrupt flag is set, so the remaining steps are skipped and the VAE decodes the unfinished x0.
        """
        capture, factors, cadence = loaded.capture, loaded.factors, self.cadence
        decoder = self._preview_decoder
        obscure = self._safety_source is not None
        capture.reset()
        single = len(jobs) == 1

        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            running = [job for job in jobs if not job.done]
            for job in running:
                if job.is_cancelled():
                    if single or all(other.done or other is job for other in running):
                        raise _Interrupted
                    job.finish(EngineCancelled("cancelled"))
                    job.deliver()  # the others go on
            step = step_offset + index + 1
            all_steps = total or pipe.num_timesteps
            for j, job in enumerate(jobs):
                if job.done or job.report is None:
                    continue
                preview = None
                if previews and cadence.wants(step, all_steps):
                    x0 = capture.x0 if capture.x0 is not None else tensors["latents"]
                    row = x0[rows[j] : rows[j] + 1]
                    preview = (
                        taesd_preview(row, decoder) if decoder is not None else latent_preview(row, factors)
                    )
                    if obscure:  # the safety checker sees only the final images
                        preview = obscure_preview(preview)
                job.report(ProgressUpdate(step=step, total=all_steps, preview=preview))
            if stop < 1.0 and index + 1 >= stop_step(pipe.num_timesteps, stop):
                if capture.x0 is not None:
                    tensors = {**tensors, "latents": capture.x0.to(tensors["latents"].dtype)}
                pipe._interrupt = True  # the loop skips the remaining steps, then decodes the latents
            return tensors

        return on_step_end

    def _txt2img_or_img2img(self, loaded: _Loaded, jobs: list[_Job]) -> list[list[Image.Image]]:
        first = jobs[0].request
        conditioning: list[Row] = []
        generators: list[torch.Generator] = []
        rows: list[int] = []
        for job in jobs:
            r = job.request
            rows.append(len(conditioning))
            conditioning += rows_for(r)
            generators += [torch.Generator("cpu").manual_seed(s) for s in tile_seeds(r.seed, r.n)]
        arguments: dict[str, Any] = {
            **conditioning_arguments(loaded.encoder, conditioning),
            "num_images_per_prompt": 1,
            "num_inference_steps": effective_steps(first),
            "generator": generators,
            "callback_on_step_end": self._step_callback(loaded, jobs, rows, stop=first.stop),
            "output_type": "pil",
        }
        if first.operation == Operation.TXT2IMG:
            output = loaded.txt2img(width=first.width, height=first.height, **arguments)
        else:
            latents = torch.cat(
                [
                    self._encode(loaded, job.request.init_image, first.width, first.height).repeat(
                        job.request.n, 1, 1, 1
                    )
                    for job in jobs
                ]
            )
            output = loaded.img2img(image=latents, strength=strength_of(first), **arguments)
        images = [_exact(image, first.width, first.height) for image in output.images]
        return [images[rows[j] : rows[j] + job.request.n] for j, job in enumerate(jobs)]

    def _encode(self, loaded: _Loaded, image: Image.Image | None, width: int, height: int) -> torch.Tensor:
        """The deterministic (mean) latent of ``image`` resized to ``width`` x ``height``, scaled for the UNet."""
        assert image is not None
        pipe = loaded.img2img
        pixels = pipe.image_processor.preprocess(
            image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        ).to(device=pipe.vae.device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            latent = pipe.vae.encode(pixels).latent_dist.mode()
        return latent * pipe.vae.config.scaling_factor

    def _upscale(self, loaded: _Loaded, job: _Job) -> list[Image.Image]:
        request = job.request
        assert request.init_image is not None
        width, height = final_size(request)
        big = request.init_image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        overlap = max(SIZE_MULTIPLE, (self.upscale_tile // 8) // SIZE_MULTIPLE * SIZE_MULTIPLE)
        boxes = tile_boxes(width, height, self.upscale_tile, overlap)
        steps = effective_steps(request)
        per_tile = int(steps * strength_of(request))
        total = per_tile * len(boxes)
        accumulated = np.zeros((request.n, height, width, 3), dtype=np.float32)
        conditioning = conditioning_arguments(loaded.encoder, rows_for(request))
        weights = np.zeros((height, width, 1), dtype=np.float32)
        for index, box in enumerate(boxes):
            crop = big.crop(box)
            generators = [torch.Generator("cpu").manual_seed(s) for s in tile_seeds(request.seed, request.n)]
            output = loaded.img2img(
                image=self._encode(loaded, crop, crop.width, crop.height).repeat(request.n, 1, 1, 1),
                strength=strength_of(request),
                **conditioning,
                num_inference_steps=steps,
                generator=generators,
                callback_on_step_end=self._step_callback(
                    loaded, [job], [0], step_offset=index * per_tile, total=total, previews=index == 0
                ),
                output_type="np",
            )
            ramp = blend_weights(crop.width, crop.height, overlap if len(boxes) > 1 else 0)
            left, top, right, bottom = box
            accumulated[:, top:bottom, left:right] += output.images * ramp
            weights[top:bottom, left:right] += ramp
        pixels = (accumulated / np.maximum(weights, 1e-6) * 255).round().clip(0, 255).astype(np.uint8)
        return [Image.fromarray(p) for p in pixels]

    def _outpaint(self, loaded: _Loaded, job: _Job) -> list[Image.Image]:
        request = job.request
        assert request.init_image is not None
        original = request.init_image.convert("RGB")
        layout = outpaint_layout(original.width, original.height, request.operation)
        generators = [torch.Generator("cpu").manual_seed(s) for s in tile_seeds(request.seed, request.n)]
        output = loaded.inpaint(
            **conditioning_arguments(loaded.encoder, rows_for(request)),
            image=outpaint_canvas(original, layout),
            mask_image=outpaint_mask(layout),
            width=layout.width,
            height=layout.height,
            strength=1.0,
            num_inference_steps=request.steps,
            generator=generators,
            callback_on_step_end=self._step_callback(loaded, [job], [0]),
            output_type="pil",
        )
        return [paste_original(image, original, layout) for image in output.images]

    # -- models ----------------------------------------------------------------------------------------

    def _pipelines(self, alias: str | None) -> _Loaded:
        spec = self.registry.get(alias)
        return self._cache.get(spec.alias, lambda: self._load(spec))

    def _load(self, spec: ModelSpec) -> _Loaded:
        from diffusers import AutoPipelineForInpainting

        device = resolve_device(self.device)
        pipe = load_pipeline(spec.source, device, dtype=self._dtype, config_folder=spec.config_folder)
        if self.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if self.compile_unet:
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=False)
        if self._preview_source is not None and self._preview_decoder is None:
            self._preview_decoder = load_preview_decoder(
                self._preview_source, pipe.vae.device, pipe.vae.dtype
            )
            log.info("engine previews decoded by %s", self._preview_source)
        if self._safety_source is not None and self._safety_checker is None:
            self._safety_checker = load_safety_checker(self._safety_source, pipe.vae.device, pipe.vae.dtype)
            log.info("engine safety checker on: %s", self._safety_checker.source)
        img2img = img2img_pipeline(pipe)
        try:
            inpaint = AutoPipelineForInpainting.from_pipe(pipe)
            inpaint.set_progress_bar_config(disable=True)
        except Exception as error:  # e.g. a pipeline family without an inpainting variant
            log.warning("no inpainting pipeline for %s: %r", spec.alias, error)
            inpaint = None
        attention = "SDPA" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "eager"
        native = getattr(pipe.unet.config, "in_channels", 4) == 9
        log.info(
            "engine model=%s source=%s device=%s dtype=%s attention=%s channels_last=%s compile=%s "
            "batch_max=%s inpaint=%s",
            spec.alias,
            spec.source,
            device,
            pipe.unet.dtype,
            attention,
            self.channels_last,
            self.compile_unet,
            self.max_batch,
            "native" if native else "latent-blend fallback",
        )
        return _Loaded(
            spec=spec,
            txt2img=pipe,
            img2img=img2img,
            inpaint=inpaint,
            capture=X0Capture(pipe.scheduler),  # the img2img and inpaint pipelines share this scheduler
            factors=latent_rgb_factors(model_family(pipe)),
            native_inpaint=native,
            encoder=prompt_encoder(pipe),
        )

    @staticmethod
    def _release(loaded: _Loaded) -> None:
        loaded.capture.detach()
        log.info("engine model unloaded model=%s", loaded.spec.alias)
        _free_device_memory()

    def _unload(self) -> None:
        with self._lock:
            self._cache.clear()

    def loaded_models(self) -> list[str]:
        return self._cache.keys()


@dataclass
class EngineStats:
    """Counters for ``/metrics``: images made, seconds spent, seconds per denoising step (last batch)."""

    images: int = 0
    busy_seconds: float = 0.0
    last_step_seconds: float = 0.0
    batches: int = 0
    oom_splits: int = 0

    def record(self, images: int, seconds: float, steps: int) -> None:
        self.images += images
        self.busy_seconds += seconds
        self.batches += 1
        self.last_step_seconds = seconds / max(1, steps)


@contextlib.contextmanager
def seamless(pipe: Any, enabled: bool) -> Iterator[None]:
    """Circular padding on every ``Conv2d`` of the UNet and VAE while the block runs (then restored)."""
    if not enabled:
        yield
        return
    convs = [
        module
        for name in ("unet", "vae")
        for module in getattr(pipe, name).modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved, strict=True):
            conv.padding_mode = mode


def _validate(request: GenerationRequest) -> None:
    if request.width <= 0 or request.height <= 0:
        raise EngineError("width and height must be positive")
    if request.width % SIZE_MULTIPLE or request.height % SIZE_MULTIPLE:
        raise EngineError(f"width and height must be multiples of {SIZE_MULTIPLE}")
    if request.n < 1 or request.steps < 1:
        raise EngineError("n and steps must be at least 1")
    if request.operation.needs_image and request.init_image is None:
        raise EngineError(f"{request.operation.value} needs an init image")
    if request.operation == Operation.IMG2IMG:
        if not 0.0 < request.strength <= 1.0:
            raise EngineError("strength must be in (0, 1]")
        if int(request.steps * request.strength) < 1:
            raise EngineError(f"strength {request.strength} leaves no denoising steps out of {request.steps}")
    if not 0.1 <= request.stop <= 1.0:
        raise EngineError("stop must be between 0.1 and 1.0")
    width, height = final_size(request)
    if max(width, height) > MAX_SIDE:
        raise EngineError(f"the result would be {width}x{height}; the largest side allowed is {MAX_SIDE}")


def _is_out_of_memory(error: BaseException) -> bool:
    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if t
    )
    return isinstance(error, oom_types) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def _free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _exact(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
