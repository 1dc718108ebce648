"""What every third-party backend adapter shares: the request plan, images in and out, the HTTP session.

A backend (AUTOMATIC1111, ComfyUI, a hosted predictions API) knows txt2img and img2img, sometimes inpainting.
``plan(request)`` turns each of our operations into one of those, the same way the local engine does:

* Vary (Subtle/Strong) and image prompts: img2img of the init image at the operation's strength.
* Upscale (Subtle/Creative): the init image resized 2x (Lanczos) here, then img2img of the whole image at the
  upscale strength (the backend sees one large image; the local engine tiles instead).
* Zoom Out, Make Square, pans: the original on a larger canvas (edges stretched) plus a mask of the new area,
  inpainted at strength 1; the original's pixels are pasted back afterwards (``finish``), exactly as locally.

Nothing here imports Discord or the database.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
from dataclasses import dataclass

import aiohttp
from PIL import Image

from engine.base import (
    UPSCALE_CREATIVE_STRENGTH,
    UPSCALE_SUBTLE_STRENGTH,
    VARY_STRONG_STRENGTH,
    VARY_SUBTLE_STRENGTH,
    EngineError,
    GenerationRequest,
    Operation,
)
from engine.geometry import (
    Layout,
    outpaint_canvas,
    outpaint_layout,
    outpaint_mask,
    paste_original,
    upscaled_size,
)
from engine.safe_fetch import ImageFetchError, decode_image

IMG2IMG_OPERATIONS = frozenset(
    {
        Operation.IMG2IMG,
        Operation.VARY_SUBTLE,
        Operation.VARY_STRONG,
        Operation.UPSCALE_SUBTLE,
        Operation.UPSCALE_CREATIVE,
    }
)
"""Everything an img2img-capable backend can do without a mask."""

RESULT_MAX_SIDE = 4096
"""A backend's result larger than this on a side is scaled down (an upscale of a 2048 image is 4096)."""
PREVIEW_SIDE = 512
OUTPAINT_FEATHER = 8
"""Pixels the seam of an outpainting mask is blurred into the new area (the original stays untouched)."""


@dataclass(frozen=True)
class Plan:
    """What the backend is asked: txt2img (no ``init_image``), img2img, or inpainting (with ``mask``)."""

    width: int
    height: int
    steps: int
    strength: float  # 1.0 for txt2img and inpainting
    init_image: Image.Image | None = None
    mask: Image.Image | None = None  # "L": 255 where pixels are generated
    layout: Layout | None = None  # outpainting: where the original goes back
    original: Image.Image | None = None

    @property
    def kind(self) -> str:
        return "txt2img" if self.init_image is None else ("inpaint" if self.mask is not None else "img2img")


def strength_of(request: GenerationRequest) -> float:
    return {
        Operation.IMG2IMG: request.strength,
        Operation.VARY_SUBTLE: VARY_SUBTLE_STRENGTH,
        Operation.VARY_STRONG: VARY_STRONG_STRENGTH,
        Operation.UPSCALE_SUBTLE: UPSCALE_SUBTLE_STRENGTH,
        Operation.UPSCALE_CREATIVE: UPSCALE_CREATIVE_STRENGTH,
    }.get(request.operation, 1.0)


def plan(request: GenerationRequest) -> Plan:
    """The backend-neutral form of ``request`` (see the module docstring)."""
    operation = request.operation
    if operation is Operation.TXT2IMG:
        return Plan(request.width, request.height, request.steps, 1.0)
    if request.init_image is None:
        raise EngineError(f"{operation.value} needs an image")
    original = request.init_image.convert("RGB")
    strength = strength_of(request)
    # fixed low strengths still get at least one real denoising step (backends run steps x strength)
    steps = request.steps if operation is Operation.IMG2IMG else max(request.steps, math.ceil(1 / strength))
    if operation.is_outpaint:
        layout = outpaint_layout(original.width, original.height, operation)
        return Plan(
            layout.width,
            layout.height,
            request.steps,
            1.0,
            init_image=outpaint_canvas(original, layout),
            mask=outpaint_mask(layout, OUTPAINT_FEATHER),
            layout=layout,
            original=original,
        )
    if operation.is_upscale:
        width, height = upscaled_size(original.width, original.height)
    else:
        width, height = request.width, request.height
    init = (
        original
        if original.size == (width, height)
        else original.resize((width, height), Image.Resampling.LANCZOS)
    )
    return Plan(width, height, steps, strength, init_image=init)


def finish(job: Plan, images: list[Image.Image]) -> list[Image.Image]:
    """Backend results → ours: RGB at the planned size, the original pasted back after outpainting."""
    out = []
    for image in images:
        rgb = image.convert("RGB")
        if job.layout is not None and job.original is not None:
            rgb = paste_original(rgb, job.original, job.layout)
        elif rgb.size != (job.width, job.height):
            rgb = rgb.resize((job.width, job.height), Image.Resampling.LANCZOS)
        out.append(rgb)
    return out


# -- images in and out -----------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def decode_result(data: bytes, backend: str) -> Image.Image:
    """A result image's bytes → RGB; a short ``EngineError`` naming the backend when they do not decode."""
    try:
        return decode_image(data, max_side=RESULT_MAX_SIDE)
    except ImageFetchError:
        raise EngineError(f"{backend} sent an image that does not decode") from None


def base64_bytes(text: object, backend: str) -> bytes:
    """Raw base64 or a ``data:image/...;base64,`` URL → bytes; a short ``EngineError`` otherwise."""
    if not isinstance(text, str):
        raise EngineError(f"{backend} sent a malformed answer (an image is not a string)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EngineError(f"{backend} sent an image that does not decode") from None


def decode_base64_result(text: object, backend: str) -> Image.Image:
    return decode_result(base64_bytes(text, backend), backend)


def preview_jpeg(data: bytes) -> bytes | None:
    """A backend's live preview (PNG, JPEG or WebP) → a small JPEG for the progress message; None if unreadable."""
    try:
        image = decode_image(data, max_side=PREVIEW_SIDE)
    except ImageFetchError:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


# -- HTTP --------------------------------------------------------------------------------------------------


class HttpClient:
    """One ``aiohttp`` session per event loop (tests run several loops), with the backend's auth."""

    def __init__(
        self, *, auth: aiohttp.BasicAuth | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self._auth = auth
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(auth=self._auth, headers=self._headers)
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


def timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)
