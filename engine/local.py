"""The in-process diffusers engine: a worker thread that runs batches of compatible jobs.

Three parts, each in its own module:

- **Which jobs share a call** — ``engine.batching`` (torch-free): the queue, the batch window, cancel,
  out-of-memory splits, the automatic batch size.
- **How a call runs** — ``engine.driver``: conditioning, noise, the diffusers denoising loop with its step
  callback (cancel, previews, progress, ``--stop``), one batched VAE decode; upscales and outpainting.
- **Where models come from** — ``engine.loading`` (one pipeline from a hub id, folder or file) and this
  module's ``_load`` (the img2img/inpaint pipelines sharing its weights, previews, safety checker, compile).

``generate`` validates the request, hands it to the worker thread and awaits the result; the event loop
keeps serving Discord meanwhile, and ``on_progress`` always runs on the caller's loop thread.

``slots = max_batch``: the bot's scheduler runs that many workers, so that many jobs can reach the engine
at once and be batched. ``max_batch="auto"`` (the default, ``ENGINE_BATCH_MAX=auto``) is 1 on the CPU and,
on CUDA, as many jobs of the model's default resolution as fit in the free memory after loading, up to
``engine.batching.AUTO_BATCH_CAP`` (``auto_batch_size``); a number always wins.

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

Compile (``compile_unet``, ``ENGINE_TORCH_COMPILE``): the UNet is compiled with ``torch.compile`` mode
``compile_mode`` ("default": about a minute per shape on an H200; "max-autotune" did not finish in 4 minutes
there, GPU.md), with static shapes. Image rows of a call are padded to buckets (1, 2, 4, 8, …, see
``engine.batching.bucket``) so serving never meets a new batch size, and ``start`` compiles each bucket of the
default resolution (guided) before it returns, logging a line per bucket. Inductor's cache lives in
``compile_cache_dir`` (``DATA_DIR/inductor-cache`` from the settings): a restart reuses the kernels. Other
resolutions (``--ar``) compile on first use.

Safety (optional, ``safety_checker=``; see ``engine.safety``): after a batch is made, the checker looks at
every job's images; a job with any flagged image ends with ``EngineFlagged`` (no image is returned), while
the other jobs of the batch keep theirs. It applies to every operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from engine import driver
from engine.base import (
    ENGINE_SECONDS,
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineFlagged,
    EngineOutOfMemory,
    GenerationRequest,
    ProgressCallback,
    ProgressUpdate,
)
from engine.batching import (
    Interrupted,
    Job,
    JobQueue,
    auto_batch_size,
    bucket,
    buckets,
    groups_by,
    run_in_halves,
)
from engine.conditioning import prompt_encoder, prompt_windows
from engine.driver import (
    MAX_SIDE,
    Loaded,
    Options,
    batch_key,
    effective_steps,
    final_size,
    seamless,
    stop_step,
    strength_of,
)
from engine.loading import img2img_pipeline, load_pipeline, model_family, resolve_device
from engine.previews import (
    LATENT_RGB,
    PREVIEW_INTERVAL,
    PreviewCadence,
    X0Capture,
    latent_rgb_factors,
    load_preview_decoder,
)
from engine.registry import LRUCache, ModelRegistry, ModelSpec
from engine.safety import SafetyChecker, load_safety_checker, safety_checker_source
from engine.sizes import SIZE_MULTIPLE

log = logging.getLogger(__name__)

__all__ = [
    "MAX_SIDE",
    "WORKER_DIED",
    "EngineStats",
    "LocalDiffusersEngine",
    "batch_key",
    "effective_steps",
    "final_size",
    "seamless",
    "stop_step",
    "strength_of",
]

_Job = Job[list[Image.Image]]
WORKER_DIED = "The image engine stopped unexpectedly while this job waited or ran; please try again."
"""The error of every job the engine's worker thread held or that waited for it when it died."""
AUTO: Literal["auto"] = "auto"
COMPILE_MODES = ("default", "reduce-overhead")
"""``reduce-overhead`` adds CUDA graphs; unmeasured here (no GPU in the session that wrote it)."""
COMPILE_ROWS_PER_JOB = 4
"""Start-up compiles buckets for ``max_batch`` jobs of this many images (a grid)."""


class LocalDiffusersEngine:
    """Runs diffusers Stable Diffusion pipelines in this process (``slots = max_batch``)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        preview_every: int = 1,
        preview_interval: float = PREVIEW_INTERVAL,
        name: str = "local",
        config_folder: str | None = None,
        dtype: torch.dtype | None = None,
        registry: ModelRegistry | None = None,
        max_batch: int | Literal["auto"] = AUTO,
        batch_window: float = 0.025,
        cache_bytes: int = 0,
        upscale_tile: int = 768,
        channels_last: bool = False,
        compile_unet: bool = False,
        compile_mode: str = "default",
        compile_cache_dir: str | Path | None = None,
        compile_buckets: Sequence[int] | None = None,
        preview_decoder: Any = None,
        safety_checker: Any = None,
    ) -> None:
        """``preview_interval``: seconds between a job's previews (0 = every step, negative = none);
        ``preview_every``: only steps that are multiples of it (0 = none). ``preview_decoder``: an
        ``AutoencoderTiny`` (TAESD) or a path / hub id of one, to decode the previews instead of the
        latent→RGB matrix (see ``engine.previews``); None or ``"latent-rgb"``: the matrix.
        ``compile_buckets``: the row counts compiled at start-up (default: every bucket up to ``max_batch``
        grid jobs). ``safety_checker``: an ``engine.safety.SafetyChecker`` or a path / hub id of one; a job with a flagged
        image fails with ``EngineFlagged`` (see ``engine.safety``); None, ``""`` or ``"off"``: no checker.
        """
        if compile_mode not in COMPILE_MODES:
            raise EngineError(f"compile mode must be one of {', '.join(COMPILE_MODES)}")
        self.name = name
        self.model = model
        self.device = device
        self.cadence = PreviewCadence(preview_interval, preview_every)
        if registry is None:
            registry = ModelRegistry.single(model, config_folder=config_folder)
        elif model in registry:
            registry = ModelRegistry(list(registry.specs.values()), model)
        self.registry = registry
        self.auto_batch = max_batch == AUTO
        self.max_batch = self._provisional_batch() if max_batch == AUTO else max(1, int(max_batch))
        self.upscale_tile = max(64, upscale_tile - upscale_tile % SIZE_MULTIPLE)
        self.channels_last = channels_last
        self.compile_unet = compile_unet
        self.compile_mode = compile_mode
        self.compile_cache_dir = compile_cache_dir
        self.compile_buckets = list(compile_buckets) if compile_buckets else None
        self._preview_source = None if preview_decoder in (None, LATENT_RGB) else preview_decoder
        self._preview_decoder: Any = None  # loaded with the first model (on its device)
        self._safety_source = safety_checker_source(safety_checker)
        self._safety_checker: SafetyChecker | None = None  # loaded with the first model (on its device)
        self._dtype = dtype
        self._cache: LRUCache[str, Loaded] = LRUCache(cache_bytes, Loaded.size_bytes, self._release)
        self._lock = threading.Lock()  # held by the worker thread while it runs a batch
        self._queue: JobQueue[list[Image.Image]] = JobQueue(self.max_batch, batch_window, driver.cancelled)
        self._worker: threading.Thread | None = None
        self._worker_guard = threading.Lock()  # one thread at a time checks and replaces the worker
        self._in_batch: list[_Job] = []  # the batch the worker is running (failed if the worker dies)
        self._started = False
        self.stats = EngineStats()

    @property
    def slots(self) -> int:
        return self.max_batch

    @property
    def batch_window(self) -> float:
        return self._queue.window

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
        data_dir = getattr(settings, "data_dir", None)
        values: dict[str, Any] = dict(
            preview_every=getattr(settings, "engine_preview_every", 1),
            preview_interval=getattr(settings, "engine_preview_interval", PREVIEW_INTERVAL),
            registry=registry,
            dtype=dtype,
            max_batch=getattr(settings, "engine_batch_max", AUTO),
            batch_window=getattr(settings, "engine_batch_window_ms", 25.0) / 1000,
            cache_bytes=int(getattr(settings, "engine_model_cache_gb", 0.0) * 2**30),
            upscale_tile=getattr(settings, "engine_upscale_tile", 768),
            channels_last=getattr(settings, "engine_channels_last", False),
            compile_unet=getattr(settings, "engine_torch_compile", False),
            compile_mode=getattr(settings, "engine_compile_mode", "default"),
            compile_cache_dir=Path(data_dir) / "inductor-cache" if data_dir else None,
            preview_decoder=getattr(settings, "engine_preview_decoder", LATENT_RGB),
            safety_checker=getattr(settings, "engine_safety_checker", None),
        )
        values.update(overrides)
        return cls(settings.model, settings.device, **values)

    # -- public API --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the default model in a worker thread (loading takes seconds to minutes; compiling, minutes)."""
        if not self._started:
            loaded = await asyncio.to_thread(self._pipelines, None)
            if self.auto_batch:
                self._set_max_batch(self._auto_batch(loaded))
            if self.compile_unet:
                await asyncio.to_thread(self._compile_buckets, loaded)
            self._started = True
        self._queue.open()
        self._ensure_worker()

    async def close(self) -> None:
        self._started = False  # first: no new job is queued behind the closing queue
        left = self._queue.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.join)
        for job in left:
            job.finish(EngineError("the engine stopped"))
            job.deliver()
        await asyncio.to_thread(self._unload)
        self._started = False

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        """Make ``request.n`` RGB images of exactly ``final_size(request)``."""
        if not self._started:
            raise EngineError("the local engine is not started")
        driver.validate(request)
        spec = self.registry.get(request.model)
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()  # our awaiting task was cancelled: stop the work too

        def is_cancelled() -> bool:
            return abandoned.is_set() or (cancel is not None and cancel.cancelled)

        report = None
        if on_progress is not None:
            callback = on_progress

            def report(update: ProgressUpdate) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening
                    loop.call_soon_threadsafe(callback, update)

        job: _Job = Job(request, spec.alias, report, is_cancelled, loop, loop.create_future())
        job.key = batch_key(request, spec.alias)
        self._ensure_worker()  # a dead worker is replaced before the job waits for it
        self._queue.put(job)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            abandoned.set()
            if self._queue.withdraw(job):  # never started: nothing to wait for
                raise
            with contextlib.suppress(BaseException):
                await job.future  # return only once the worker has really let go of it
            raise

    def model_spec(self, alias: str | None = None) -> ModelSpec:
        """The registry entry (defaults: resolution, steps, guidance) of a model alias."""
        return self.registry.get(alias)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    # -- worker thread -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._queue.take()
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
        """Start the worker thread if there is none or it died."""
        with self._worker_guard:
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
            orphans = [*self._in_batch, *self._queue.drain()]
            self._in_batch = []
            with self._worker_guard:
                if self._worker is threading.current_thread():
                    self._worker = None
            for job in orphans:
                if not job.done:
                    job.finish(EngineError(WORKER_DIED))
                job.deliver()

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.done]
        if live:
            run_in_halves(live, self._attempt, _is_out_of_memory, self._split)

    def _split(self, size: int) -> None:
        _free_device_memory()
        half = size // 2
        log.warning("out of memory at batch %s: splitting into %s + %s", size, half, size - half)
        self.stats.oom_splits += 1

    def _attempt(self, live: list[_Job]) -> None:
        """Run ``live`` as one batch and finish each job (images, flagged, cancelled or failed); only an
        out-of-memory error of several jobs propagates (``run_in_halves`` then splits the batch)."""
        started = time.perf_counter()
        try:
            results = self._denoise(live)
            flagged = self._safety_flags(live, results)
        except Interrupted:
            for job in live:
                log.info("generation cancelled seed=%s", job.request.seed)
                job.finish(EngineCancelled("cancelled"))
            return
        except Exception as error:
            if _is_out_of_memory(error):
                if len(live) > 1:
                    raise
                _free_device_memory()
                request = live[0].request
                log.warning("out of memory n=%s size=%sx%s", request.n, request.width, request.height)
                live[0].finish(EngineOutOfMemory(
                    f"out of memory making {request.n} image(s) at {request.width}x{request.height}"
                ))  # fmt: skip
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

    def _options(self) -> Options:
        return Options(
            cadence=self.cadence,
            preview_decoder=self._preview_decoder,
            upscale_tile=self.upscale_tile,
            pad_to_bucket=self._bucket if self.compile_unet else None,
            obscure_previews=self._safety_source is not None,
        )

    def _bucket(self, rows: int) -> int:
        """The smallest compiled size that holds ``rows`` (else the power-of-two bucket, compiled on first use)."""
        sizes = sorted(self._compiled_sizes())
        return next((size for size in sizes if size >= rows), bucket(rows, sizes[-1]))

    def _compiled_sizes(self) -> list[int]:
        return self.compile_buckets or buckets(self.max_batch * COMPILE_ROWS_PER_JOB)

    def _denoise(self, jobs: list[_Job]) -> list[list[Image.Image]]:
        first = jobs[0].request
        loaded = self._pipelines(jobs[0].model)
        options = self._options()
        with seamless(loaded.txt2img, first.tile):
            if first.operation.is_upscale:
                return [driver.upscale(loaded, jobs[0], options)]
            if first.operation.is_outpaint:
                return [driver.outpaint(loaded, jobs[0], options)]
            return self._by_prompt_length(loaded, jobs, options)

    def _by_prompt_length(
        self, loaded: Loaded, jobs: list[_Job], options: Options
    ) -> list[list[Image.Image]]:
        """One call per conditioning length (long prompts), so padding never depends on the batch."""
        groups = groups_by(jobs, lambda job: prompt_windows(loaded.encoder, job.request))
        if len(groups) == 1:
            return driver.denoise(loaded, jobs, options)
        results: list[list[Image.Image]] = [[] for _ in jobs]
        for indices in groups:
            try:
                if all(jobs[i].is_cancelled() for i in indices):  # while an earlier call ran
                    raise Interrupted
                made = driver.denoise(loaded, [jobs[i] for i in indices], options)
            except Interrupted:  # every job of this call was cancelled; the other calls go on
                for index in indices:
                    jobs[index].finish(EngineCancelled("cancelled"))
                    jobs[index].deliver()
                continue
            for index, images in zip(indices, made, strict=True):
                results[index] = images
        return results

    # -- batch size and compile ------------------------------------------------------------------------

    def _provisional_batch(self) -> int:
        """``auto`` before the model is loaded: 1 without CUDA (final), else the size for the free memory now."""
        return self._auto_batch(None)

    def _auto_batch(self, loaded: Loaded | None) -> int:
        try:
            device = resolve_device(self.device)
        except EngineError:
            return 1
        if not device.startswith("cuda"):
            return 1
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        resolution = self.registry.get(None).resolution or 512
        return auto_batch_size(free, resolution, resolution, images_per_job=COMPILE_ROWS_PER_JOB)

    def _set_max_batch(self, size: int) -> None:
        self.max_batch = size
        self._queue.max_batch = size
        log.info("engine batch size auto=%s (resolution and free GPU memory)", size)

    def _compile_buckets(self, loaded: Loaded) -> None:
        """Run the compiled UNet once per row bucket (guided, default resolution) so serving never compiles."""
        resolution = self.registry.get(None).resolution or 512
        sizes = self._compiled_sizes()
        for number, rows in enumerate(sizes, 1):
            log.info("engine compiling the UNet for %s image row(s) at %s² (%s/%s)…", rows, resolution, number,
                     len(sizes))  # fmt: skip
            started = time.perf_counter()
            loaded.txt2img(prompt=[""] * rows, width=resolution, height=resolution, num_inference_steps=2,
                           guidance_scale=7.0, output_type="latent")  # fmt: skip
            log.info("engine compiled %s row(s) in %.1f s", rows, time.perf_counter() - started)

    # -- models ----------------------------------------------------------------------------------------

    def _pipelines(self, alias: str | None) -> Loaded:
        spec = self.registry.get(alias)
        return self._cache.get(spec.alias, lambda: self._load(spec))

    def _load(self, spec: ModelSpec) -> Loaded:
        from diffusers import AutoPipelineForInpainting

        device = resolve_device(self.device)
        pipe = load_pipeline(spec.source, device, dtype=self._dtype, config_folder=spec.config_folder)
        if self.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if self.compile_unet:
            if self.compile_cache_dir is not None:  # kernels survive a restart
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.compile_cache_dir))
            pipe.unet = torch.compile(pipe.unet, mode=self.compile_mode, dynamic=False)
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
            self.compile_mode if self.compile_unet else "off",
            "auto" if self.auto_batch else self.max_batch,
            "native" if native else "latent-blend fallback",
        )
        return Loaded(
            spec=spec,
            txt2img=pipe,
            img2img=img2img,
            inpaint=inpaint,
            capture=X0Capture(pipe.scheduler),  # the img2img and inpaint pipelines share this scheduler
            factors=latent_rgb_factors(model_family(pipe)).to(pipe.vae.device),
            native_inpaint=native,
            encoder=prompt_encoder(pipe),
            vae=pipe.vae,
        )

    @staticmethod
    def _release(loaded: Loaded) -> None:
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
