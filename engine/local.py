"""The in-process diffusers engine: one pipeline, one slot, work in a thread, progress back on the loop.

A short pipeline driver. ``generate`` captures the running event loop, runs the diffusers pipeline in a
worker thread (the loop keeps serving Discord), and from the pipeline's ``callback_on_step_end``:
checks the cancel token, builds a latent preview every N steps and hands a ``ProgressUpdate`` to the
loop with ``call_soon_threadsafe`` — ``on_progress`` always runs on the loop thread.

All ``n`` tiles of a job run in one batched pipeline call with one CPU ``torch.Generator`` per tile seed
(``engine.seeds.tile_seeds``), so tile ``i`` of a grid equals a one-image job with seed ``seed + i``
(up to batched-float tolerance), on any device.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from engine.base import (
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    GenerationRequest,
    Operation,
    ProgressCallback,
    ProgressUpdate,
)
from engine.loading import img2img_pipeline, load_pipeline, model_family, resolve_device
from engine.previews import PreviewCadence, X0Capture, latent_preview, latent_rgb_factors
from engine.seeds import tile_seeds
from engine.sizes import SIZE_MULTIPLE

log = logging.getLogger(__name__)

Report = Callable[[ProgressUpdate], None]


class _Interrupted(Exception):
    """Raised inside the pipeline's step callback to stop denoising at once (no final VAE decode)."""


class LocalDiffusersEngine:
    """Runs a diffusers Stable Diffusion pipeline in this process (``slots = 1``)."""

    slots = 1

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        preview_every: int = 1,
        name: str = "local",
        config_folder: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.device = device
        self.cadence = PreviewCadence(preview_every)
        self._config_folder = config_folder
        self._dtype = dtype
        self._txt2img: Any = None
        self._img2img: Any = None
        self._capture: X0Capture | None = None
        self._factors: torch.Tensor | None = None
        self._lock = threading.Lock()  # one slot: held by the worker thread for the whole run

    async def start(self) -> None:
        """Load the model in a worker thread (loading takes seconds to minutes)."""
        if self._txt2img is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        await asyncio.to_thread(self._unload)

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        """Make ``request.n`` RGB images of exactly ``request.width`` x ``request.height``."""
        if self._txt2img is None:
            raise EngineError("the local engine is not started")
        _validate(request)
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()  # our awaiting task was cancelled: stop the thread too

        def is_cancelled() -> bool:
            return abandoned.is_set() or (cancel is not None and cancel.cancelled)

        report: Report | None = None
        if on_progress is not None:
            callback = on_progress

            def report(update: ProgressUpdate) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening
                    loop.call_soon_threadsafe(callback, update)

        work = asyncio.ensure_future(asyncio.to_thread(self._run, request, report, is_cancelled))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            abandoned.set()
            with contextlib.suppress(BaseException):
                await work  # return only once the thread has really stopped
            raise

    # -- worker thread -------------------------------------------------------------------------------

    def _load(self) -> None:
        device = resolve_device(self.device)
        pipe = load_pipeline(self.model, device, dtype=self._dtype, config_folder=self._config_folder)
        self._img2img = img2img_pipeline(pipe)
        self._capture = X0Capture(pipe.scheduler)  # the img2img pipeline shares this scheduler
        self._factors = latent_rgb_factors(model_family(pipe))
        self._txt2img = pipe

    def _unload(self) -> None:
        with self._lock:
            if self._capture is not None:
                self._capture.detach()
            self._txt2img = self._img2img = self._capture = None
            _free_device_memory()

    def _run(
        self, request: GenerationRequest, report: Report | None, is_cancelled: Callable[[], bool]
    ) -> list[Image.Image]:
        with self._lock:
            if is_cancelled():
                raise EngineCancelled("cancelled")
            try:
                images = self._denoise(request, report, is_cancelled)
            except _Interrupted:
                log.info("generation cancelled seed=%s", request.seed)
                raise EngineCancelled("cancelled") from None
            except Exception as error:
                if _is_out_of_memory(error):
                    log.warning("out of memory n=%s size=%sx%s", request.n, request.width, request.height)
                    _free_device_memory()
                    raise EngineOutOfMemory(
                        f"out of memory making {request.n} image(s) at {request.width}x{request.height}"
                    ) from error
                log.exception("generation failed seed=%s", request.seed)
                raise EngineError(f"image generation failed ({type(error).__name__})") from error
        return [_exact_size(image, request) for image in images]

    def _denoise(
        self, request: GenerationRequest, report: Report | None, is_cancelled: Callable[[], bool]
    ) -> list[Image.Image]:
        assert self._capture is not None and self._factors is not None
        capture, factors, cadence = self._capture, self._factors, self.cadence
        capture.reset()

        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if is_cancelled():
                raise _Interrupted
            if report is not None:
                step, total = index + 1, pipe.num_timesteps
                preview = None
                if cadence.wants(step, total):
                    x0 = capture.x0 if capture.x0 is not None else tensors["latents"]
                    preview = latent_preview(x0, factors)
                report(ProgressUpdate(step=step, total=total, preview=preview))
            return tensors

        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "num_images_per_prompt": request.n,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "generator": [torch.Generator("cpu").manual_seed(s) for s in tile_seeds(request.seed, request.n)],
            "callback_on_step_end": on_step_end,
            "output_type": "pil",
        }
        if request.operation == Operation.IMG2IMG:
            assert request.init_image is not None
            init = request.init_image.convert("RGB").resize(
                (request.width, request.height), Image.Resampling.LANCZOS
            )
            output = self._img2img(image=init, strength=request.strength, **arguments)
        else:
            output = self._txt2img(width=request.width, height=request.height, **arguments)
        return list(output.images)


def _validate(request: GenerationRequest) -> None:
    if request.width <= 0 or request.height <= 0:
        raise EngineError("width and height must be positive")
    if request.width % SIZE_MULTIPLE or request.height % SIZE_MULTIPLE:
        raise EngineError(f"width and height must be multiples of {SIZE_MULTIPLE}")
    if request.n < 1 or request.steps < 1:
        raise EngineError("n and steps must be at least 1")
    if request.operation == Operation.IMG2IMG:
        if request.init_image is None:
            raise EngineError("img2img needs an init image")
        if not 0.0 < request.strength <= 1.0:
            raise EngineError("strength must be in (0, 1]")
        if int(request.steps * request.strength) < 1:
            raise EngineError(f"strength {request.strength} leaves no denoising steps out of {request.steps}")


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


def _exact_size(image: Image.Image, request: GenerationRequest) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (request.width, request.height):
        image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
    return image
