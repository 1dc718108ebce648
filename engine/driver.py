"""The pipeline driver: runs one batch of compatible jobs through a diffusers pipeline, in the diffusers style.

``denoise`` (text-to-image and image-to-image, the batched path) in numbered steps:

1. **Conditioning**: every image row gets its prompt embedding and guidance scale in one batched encode
   (``engine.conditioning``); with a compiled UNet the rows are padded to the next bucket (1, 2, 4, 8, …).
2. **Noise**: one CPU ``torch.Generator`` per row seeded with the tile's seed (the same image on any device,
   alone, in a grid or in a batch); image operations add the init image's deterministic latent (the mean).
3. **Denoising**: the diffusers pipeline's own loop with ``output_type="latent"``; after each step it calls
   ``StepCallback`` (``callback_on_step_end``, diffusers' documented hook) — see there for what it does.
4. **Decode**: one VAE call for the whole batch in the pipeline's dtype (upcast to fp32 only where the VAE's
   config asks, as diffusers does: SDXL's original VAE overflows in fp16; its fp16-fix VAE does not), pixels
   turned into uint8 on the device, one copy to the host.
5. **Images**: PIL images per job (padding rows dropped).

Nothing in steps 2-3 waits for the device per step: no ``.item()``, ``.cpu()``, ``.tolist()`` or branching on
tensor values (``tests/engine/test_no_sync.py`` counts them). Upscales (tiled) and outpainting are single-job
operations that use the pipelines' own decode (``upscale``, ``outpaint``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.base import (
    UPSCALE_CREATIVE_STRENGTH,
    UPSCALE_SUBTLE_STRENGTH,
    VARY_STRONG_STRENGTH,
    VARY_SUBTLE_STRENGTH,
    EngineCancelled,
    EngineError,
    GenerationRequest,
    Operation,
    ProgressUpdate,
)
from engine.batching import Interrupted, Job, stop_cancelled
from engine.conditioning import Row, conditioning_arguments, rows_for
from engine.geometry import (
    blend_weights,
    outpaint_canvas,
    outpaint_layout,
    outpaint_mask,
    output_size,
    paste_original,
    tile_boxes,
)
from engine.previews import PreviewCadence, PreviewCopy, X0Capture, rgb_on_device, taesd_on_device
from engine.registry import ModelSpec
from engine.safety import obscure_preview
from engine.seeds import tile_seeds
from engine.sizes import SIZE_MULTIPLE

EngineJob = Job[list[Image.Image]]

MAX_SIDE = 4096
"""No output side may exceed this (upscales of upscales included)."""

IMG2IMG_OPERATIONS = (Operation.IMG2IMG, Operation.VARY_SUBTLE, Operation.VARY_STRONG)
PREVIEW_UPSCALE = 8


def cancelled(job: object) -> EngineCancelled:
    return EngineCancelled("cancelled")


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
    if request.operation not in (Operation.TXT2IMG, *IMG2IMG_OPERATIONS):
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


def validate(request: GenerationRequest) -> None:
    """Refuse a request the pipelines cannot run, with a sentence a user can act on."""
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


@dataclass
class Loaded:
    """One model's pipelines (sharing components) and its preview helpers."""

    spec: ModelSpec
    txt2img: Any
    img2img: Any
    inpaint: Any
    capture: X0Capture
    factors: torch.Tensor  # the latent→RGB preview matrix, on the model's device
    native_inpaint: bool
    encoder: Any = None  # compel's prompt encoder (engine.conditioning.prompt_encoder)
    vae: Any = None  # the VAE the pipelines share (decodes every batch)

    def size_bytes(self) -> int:
        total = 0
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(self.txt2img, name, None)
            if isinstance(module, torch.nn.Module):
                total += sum(p.numel() * p.element_size() for p in module.parameters())
        return total


@dataclass
class Options:
    """How the driver runs calls (from the engine's settings)."""

    cadence: PreviewCadence
    preview_decoder: Any = None  # an AutoencoderTiny for previews; None = the latent→RGB matrix
    upscale_tile: int = 768
    pad_to_bucket: Callable[[int], int] | None = None  # rows → rows to run (compiled UNet); None = as is
    obscure_previews: bool = False  # the safety checker is on: previews leave with no detail (engine.safety)


class StepCallback:
    """``callback_on_step_end`` of one pipeline call for jobs ``jobs``, job ``j`` starting at row ``rows[j]``.

    diffusers calls it after every denoising step as ``callback(pipe, index, timestep, tensors)`` and
    continues with the tensors it returns. Per step, in this order, and none of it waits for the device:

    1. **Cancel**: a cancelled job of the batch is answered at once, the others go on; when none is left,
       ``Interrupted`` ends the call (``engine.batching.stop_cancelled``; Python only).
    2. **Previews**: when the time cadence is due (``PreviewCadence``), each running job's first row of the
       predicted x0 (the latents when the scheduler gives none) becomes RGB on the device (one matrix product,
       or TAESD) and starts a non-blocking copy to the host (``PreviewCopy``); a copy is picked up (JPEG) at
       the first step at which its CUDA event says it is done, never waited for. One copy in flight at a time.
    3. **Progress**: one ``ProgressUpdate(step, total, preview)`` per running job, handed to its loop.
    4. **--stop**: after step ``stop_step(total, stop)`` the latents are replaced by that step's x0 (a device
       op) and the pipeline's interrupt flag is set: it skips the remaining steps and returns those latents.
    """

    def __init__(
        self,
        loaded: Loaded,
        jobs: Sequence[EngineJob],
        rows: Sequence[int],
        options: Options,
        *,
        step_offset: int = 0,
        total: int | None = None,
        previews: bool = True,
        stop: float = 1.0,
    ) -> None:
        self.loaded, self.jobs, self.options = loaded, list(jobs), options
        self.step_offset, self.total, self.stop = step_offset, total, stop
        self.clock = options.cadence.start() if previews else None
        self.watching = [job for job in jobs if job.report is not None]
        self.first_rows = [rows[j] for j, job in enumerate(jobs) if job.report is not None]
        self._copy: tuple[PreviewCopy, list[EngineJob]] | None = None
        loaded.capture.reset()

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        stop_cancelled(self.jobs, cancelled)  # 1. cancel
        step = self.step_offset + index + 1
        total = self.total or pipe.num_timesteps
        x0 = self.loaded.capture.x0
        latents = tensors["latents"]
        if self.clock is not None and self.watching and self._copy is None and self.clock.due(step):
            self._start_preview(x0 if x0 is not None else latents)  # 2. previews
        previews = self._ready_previews()
        for job in self.jobs:  # 3. progress
            if not job.done and job.report is not None:
                job.report(ProgressUpdate(step=step, total=total, preview=previews.get(id(job))))
        if self.stop < 1.0 and index + 1 >= stop_step(pipe.num_timesteps, self.stop):  # 4. --stop
            if x0 is not None:
                tensors = {**tensors, "latents": x0.to(latents.dtype)}
            pipe._interrupt = True  # the loop skips the remaining steps and returns the latents
        return tensors

    def _start_preview(self, x0: torch.Tensor) -> None:
        # slices, not an index tensor: copying an index from pageable host memory to the GPU would sync
        first = torch.cat([x0[row : row + 1] for row in self.first_rows])
        decoder = self.options.preview_decoder
        if decoder is not None:
            pixels, upscale = taesd_on_device(first, decoder), 1
        else:
            pixels, upscale = rgb_on_device(first, self.loaded.factors), PREVIEW_UPSCALE
        self._copy = (PreviewCopy(pixels, upscale), list(self.watching))

    def _ready_previews(self) -> dict[int, bytes]:
        if self._copy is None or not self._copy[0].ready():
            return {}
        copy, jobs = self._copy
        self._copy = None
        jpegs = copy.jpegs()
        if self.options.obscure_previews:  # the safety checker sees only the final images
            jpegs = [obscure_preview(jpeg) for jpeg in jpegs]
        return {id(job): jpeg for job, jpeg in zip(jobs, jpegs, strict=True) if not job.done}


def decode(vae: Any, latents: torch.Tensor) -> np.ndarray:
    """``[B,4,h,w]`` latents → ``[B,8h,8w,3]`` uint8 pixels: one VAE call in the pipeline's dtype (fp32 where
    the VAE's ``force_upcast`` asks, like diffusers), the [-1,1] → [0,255] mapping on the device, one copy."""
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # some SDXL-family VAEs normalise their latents
        shape = (1, -1, 1, 1)
        mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
        std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
    upcast = vae.dtype == torch.float16 and bool(getattr(config, "force_upcast", False))
    with torch.no_grad(), _upcast(vae, upcast):
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    pixels = ((images.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


@contextlib.contextmanager
def _upcast(vae: Any, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    vae.to(torch.float32)
    try:
        yield
    finally:
        vae.to(torch.float16)


def denoise(loaded: Loaded, jobs: Sequence[EngineJob], options: Options) -> list[list[Image.Image]]:
    """Text-to-image or image-to-image for compatible jobs in one call (steps 1-5 of the module doc)."""
    first = jobs[0].request
    # 1. conditioning, one row per image (padded to a bucket for a compiled UNet)
    conditioning: list[Row] = []
    rows: list[int] = []
    for job in jobs:
        rows.append(len(conditioning))
        conditioning += rows_for(job.request)
    made = len(conditioning)
    padded = options.pad_to_bucket(made) if options.pad_to_bucket is not None else made
    conditioning += [conditioning[-1]] * (padded - made)
    # 2. noise: one CPU generator per row
    generators = [torch.Generator("cpu").manual_seed(row.seed) for row in conditioning]
    arguments: dict[str, Any] = {
        **conditioning_arguments(loaded.encoder, conditioning),
        "num_images_per_prompt": 1,
        "num_inference_steps": effective_steps(first),
        "generator": generators,
        "callback_on_step_end": StepCallback(loaded, jobs, rows, options, stop=first.stop),
        "output_type": "latent",
    }
    # 3. denoising
    if first.operation == Operation.TXT2IMG:
        output = loaded.txt2img(width=first.width, height=first.height, **arguments)
    else:
        latents = torch.cat([encode(loaded, job.request.init_image, first.width, first.height).repeat(
            job.request.n, 1, 1, 1) for job in jobs])  # fmt: skip
        latents = torch.cat([latents, latents[-1:].repeat(padded - made, 1, 1, 1)])
        output = loaded.img2img(image=latents, strength=strength_of(first), **arguments)
    # 4. one batched decode of the rows that are images
    pixels = decode(loaded.vae, output.images[:made])
    # 5. images per job
    images = [_exact(Image.fromarray(p), first.width, first.height) for p in pixels]
    return [images[rows[j] : rows[j] + job.request.n] for j, job in enumerate(jobs)]


def encode(loaded: Loaded, image: Image.Image | None, width: int, height: int) -> torch.Tensor:
    """The deterministic (mean) latent of ``image`` resized to ``width`` x ``height``, scaled for the UNet."""
    assert image is not None
    pipe = loaded.img2img
    pixels = pipe.image_processor.preprocess(
        image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    ).to(device=pipe.vae.device, dtype=pipe.vae.dtype)
    with torch.no_grad():
        latent = pipe.vae.encode(pixels).latent_dist.mode()
    return latent * pipe.vae.config.scaling_factor


def upscale(loaded: Loaded, job: EngineJob, options: Options) -> list[Image.Image]:
    """2x Lanczos, then img2img in overlapping tiles blended with linear ramps (previews from the first tile)."""
    request = job.request
    assert request.init_image is not None
    width, height = final_size(request)
    big = request.init_image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    tile = options.upscale_tile
    overlap = max(SIZE_MULTIPLE, (tile // 8) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    boxes = tile_boxes(width, height, tile, overlap)
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
            image=encode(loaded, crop, crop.width, crop.height).repeat(request.n, 1, 1, 1),
            strength=strength_of(request),
            **conditioning,
            num_inference_steps=steps,
            generator=generators,
            callback_on_step_end=StepCallback(
                loaded, [job], [0], options, step_offset=index * per_tile, total=total, previews=index == 0
            ),
            output_type="np",
        )
        ramp = blend_weights(crop.width, crop.height, overlap if len(boxes) > 1 else 0)
        left, top, right, bottom = box
        accumulated[:, top:bottom, left:right] += output.images * ramp
        weights[top:bottom, left:right] += ramp
    pixels = (accumulated / np.maximum(weights, 1e-6) * 255).round().clip(0, 255).astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def outpaint(loaded: Loaded, job: EngineJob, options: Options) -> list[Image.Image]:
    """The original on a larger canvas, the rest generated by the inpainting pipeline, the original pasted back."""
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
        callback_on_step_end=StepCallback(loaded, [job], [0], options),
        output_type="pil",
    )
    return [paste_original(image, original, layout) for image in output.images]


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


def _exact(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


__all__ = ["Interrupted"]
