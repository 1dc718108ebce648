"""Cheap progress previews: a linear map of the 4 latent channels to RGB, JPEG-encoded.

Never decode the VAE per step (it costs more than a denoising step). Instead multiply the latents
(preferably the scheduler's predicted x0, which looks like the final image early on) by a public
4x3 matrix, map [-1, 1] to [0, 255], upscale x8 and encode a JPEG.

Measured cost on 2 CPU cores, 512x512 image (a 4x64x64 latent), upscale x8 nearest, JPEG quality 70:
~1.4 ms per preview (~18 KB): latent→RGB matmul ~0.2 ms, x8 upscale + 512x512 JPEG encode ~1.1 ms.

Optional TAESD previews (``ENGINE_PREVIEW_DECODER`` = a path or hub id of a diffusers ``AutoencoderTiny``,
e.g. ``madebyollin/taesd`` for SD1/2, ``madebyollin/taesdxl`` for SDXL — it must match the model family):
``taesd_preview`` decodes the first row with the tiny autoencoder instead of the matrix, so previews look
like real images. It is a GPU option: on CPU a TAESD decode costs ~1.2 s at 512² (ENGINES.md) — more
than a denoising step of a small model — while on a GPU it is a few milliseconds. The default,
``latent-rgb``, is the matrix above.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

SD1_LATENT_RGB = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]
"""SD1.x/2.x latent channels (rows) → R, G, B (columns)."""

SDXL_LATENT_RGB = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
]
"""SDXL latent channels (rows) → R, G, B (columns)."""

UPSCALE = 8
JPEG_QUALITY = 70


def latent_rgb_factors(family: str = "sd1") -> torch.Tensor:
    """The 4x3 matrix for a model family: ``"sd1"`` (also SD2) or ``"sdxl"``."""
    if family == "sdxl":
        return torch.tensor(SDXL_LATENT_RGB)
    if family == "sd1":
        return torch.tensor(SD1_LATENT_RGB)
    raise ValueError(f"no latent preview matrix for model family {family!r}")


def latents_to_rgb(latents: torch.Tensor, factors: torch.Tensor) -> np.ndarray:
    """First image of ``latents`` (``[B,4,H,W]`` or ``[4,H,W]``) as an ``[H,W,3]`` uint8 array.

    ``rgb = latents · factors`` per pixel, then [-1, 1] → [0, 255] (clamped).
    """
    first = latents[0] if latents.ndim == 4 else latents
    first = first.detach().to(device="cpu", dtype=torch.float32)
    rgb = first.permute(1, 2, 0) @ factors.to(torch.float32)  # [H,W,4] @ [4,3]; einsum is ~5x slower here
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).round()
    return rgb.to(torch.uint8).numpy()


def encode_preview(rgb: np.ndarray, *, upscale: int = UPSCALE, quality: int = JPEG_QUALITY) -> bytes:
    """Upscale an ``[H,W,3]`` uint8 array by ``upscale`` (nearest) and encode it as JPEG bytes."""
    image = Image.fromarray(rgb, mode="RGB")
    if upscale != 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def latent_preview(latents: torch.Tensor, factors: torch.Tensor, *, upscale: int = UPSCALE) -> bytes:
    """The JPEG preview of the first image of ``latents``."""
    return encode_preview(latents_to_rgb(latents, factors), upscale=upscale)


LATENT_RGB = "latent-rgb"
"""The ``ENGINE_PREVIEW_DECODER`` value of the default matrix previews."""


def load_preview_decoder(
    source: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Any:
    """An ``AutoencoderTiny`` for previews: ``source`` is one (moved to ``device``/``dtype``), or a folder /
    hub id loaded with ``from_pretrained`` (offline: the hub id must be in the local cache)."""
    from diffusers import AutoencoderTiny

    decoder: Any = (
        source if isinstance(source, AutoencoderTiny) else AutoencoderTiny.from_pretrained(str(source))
    )
    decoder = decoder.to(device=device, dtype=dtype) if dtype is not None else decoder.to(device=device)
    decoder.requires_grad_(False)
    return decoder.eval()


def taesd_to_rgb(latents: torch.Tensor, decoder: Any) -> np.ndarray:
    """First image of ``latents`` (UNet scale) decoded by a tiny autoencoder, as an ``[8H,8W,3]`` uint8 array."""
    first = latents[:1] if latents.ndim == 4 else latents[None]
    parameter = next(decoder.parameters())
    first = first.detach().to(device=parameter.device, dtype=parameter.dtype)
    scaling = getattr(decoder.config, "scaling_factor", 1.0) or 1.0
    with torch.no_grad():
        pixels = decoder.decode(first / scaling).sample[0]  # [3, 8H, 8W] in [-1, 1]
    pixels = ((pixels.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().numpy()


def taesd_preview(latents: torch.Tensor, decoder: Any) -> bytes:
    """The JPEG preview of the first image of ``latents`` decoded by a TAESD decoder (already full size)."""
    return encode_preview(taesd_to_rgb(latents, decoder), upscale=1)


PREVIEW_INTERVAL = 1.0
"""Seconds between two previews of a job by default: about what a Discord message can show (its edits are
throttled to about one a second per job, ``bot.edit_budget``), so faster previews would never be seen."""


@dataclass
class PreviewCadence:
    """Which steps get a preview: the first step, then the first step at least ``interval`` seconds after the
    last preview (``interval=0``: every step; negative: none); ``every`` keeps only steps that are multiples of
    it (``ENGINE_PREVIEW_EVERY``; 0 = none). A time cadence, not a step count: a slow CPU step and a fast GPU
    step cost the same preview budget per second. ``start()`` gives one call's clock."""

    interval: float = PREVIEW_INTERVAL
    every: int = 1
    clock: Callable[[], float] = time.monotonic

    @property
    def enabled(self) -> bool:
        return self.interval >= 0 and self.every > 0

    def start(self) -> PreviewClock:
        return PreviewClock(self)


@dataclass
class PreviewClock:
    cadence: PreviewCadence
    last: float | None = None

    def due(self, step: int) -> bool:
        cadence = self.cadence
        if not cadence.enabled or step % cadence.every:
            return False
        now = cadence.clock()
        if self.last is not None and now - self.last < cadence.interval:
            return False
        self.last = now
        return True


def rgb_on_device(latents: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``[B,4,h,w]`` latents → ``[B,h,w,3]`` uint8 on the latents' device (no host transfer, no sync)."""
    rgb = latents.float().permute(0, 2, 3, 1) @ factors.to(device=latents.device, dtype=torch.float32)
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def taesd_on_device(latents: torch.Tensor, decoder: Any) -> torch.Tensor:
    """``[B,4,h,w]`` latents (UNet scale) decoded by a tiny autoencoder → ``[B,8h,8w,3]`` uint8, on device."""
    parameter = next(decoder.parameters())
    scaling = getattr(decoder.config, "scaling_factor", 1.0) or 1.0
    with torch.no_grad():
        pixels = decoder.decode(latents.to(device=parameter.device, dtype=parameter.dtype) / scaling).sample
    return ((pixels.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)


class PreviewCopy:
    """Preview pixels on their way from the device to the host, never waited for.

    On CUDA the pixels are copied with ``non_blocking=True`` into pinned host memory and a CUDA event is
    recorded after the copy; ``ready()`` asks the event (``query()`` does not block), so the denoising loop
    picks the preview up at a later step instead of stalling. On the CPU the pixels are already on the host;
    other devices (MPS) take a plain copy.
    """

    def __init__(self, pixels: torch.Tensor, upscale: int) -> None:
        self.upscale = upscale
        self._event: Any = None
        if pixels.device.type == "cuda":
            self.host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
            self.host.copy_(pixels, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        elif pixels.device.type == "cpu":
            self.host = pixels.detach()
        else:
            self.host = pixels.detach().to("cpu")

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def jpegs(self) -> list[bytes]:
        """One JPEG per row (call only when ``ready()``)."""
        return [encode_preview(row, upscale=self.upscale) for row in self.host.numpy()]


class X0Capture:
    """Wraps a scheduler's ``step`` to keep its last predicted x0 (``pred_original_sample``).

    Schedulers that do not return it (DPM++, PNDM…) leave ``x0`` as None; the caller then previews
    the current latents instead. ``reset()`` before each run.
    """

    def __init__(self, scheduler: Any) -> None:
        self.x0: torch.Tensor | None = None
        original = scheduler.step
        self._own_step = "step" in vars(scheduler)  # already wrapped on the instance by someone else

        def step(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            self.x0 = _pred_original(output)
            return output

        scheduler.step = step
        self._scheduler = scheduler
        self._original = original

    def reset(self) -> None:
        self.x0 = None

    def detach(self) -> None:
        """Restore the scheduler's own ``step``."""
        if self._own_step:
            self._scheduler.step = self._original
        else:
            del self._scheduler.step


def _pred_original(output: Any) -> torch.Tensor | None:
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is None and isinstance(output, tuple) and len(output) > 1:
        x0 = output[1]
    return x0 if isinstance(x0, torch.Tensor) else None
