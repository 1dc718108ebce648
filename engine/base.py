"""The one engine interface: a request goes in, images come out, progress flows in between.

The rest of the bot never knows which engine runs a job. An engine is anything with an async
``generate(request, on_progress, cancel)`` that returns PIL images; the local diffusers engine runs
its work in a thread, a remote engine speaks HTTP. Nothing here imports Discord or the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from PIL import Image

TILE_COUNT = 4
"""A grid job makes four images, like Midjourney."""

MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit (``--seed``, tile seeds wrap around)."""
MAX_STEPS = 150
"""Denoising steps one request may ask for (``--steps``, the engine server's limit)."""


class Operation(StrEnum):
    """What a request does. Every operation but TXT2IMG needs ``init_image``.

    The output size of VARY_* and IMG2IMG is ``width`` x ``height``; the UPSCALE_*, ZOOM_OUT_*,
    MAKE_SQUARE and PAN_* operations derive their output size from the init image (see
    ``engine.geometry``) and ignore ``width``/``height``.
    """

    TXT2IMG = "txt2img"  # text only
    IMG2IMG = "img2img"  # starts from ``init_image``, keeps ``1 - strength`` of it
    VARY_SUBTLE = "vary_subtle"  # img2img at VARY_SUBTLE_STRENGTH
    VARY_STRONG = "vary_strong"  # img2img at VARY_STRONG_STRENGTH
    UPSCALE_SUBTLE = "upscale_subtle"  # 2x Lanczos, then img2img at UPSCALE_SUBTLE_STRENGTH (tiled)
    UPSCALE_CREATIVE = "upscale_creative"  # 2x Lanczos, then img2img at UPSCALE_CREATIVE_STRENGTH (tiled)
    ZOOM_OUT_2X = "zoom_out_2x"  # canvas 2x each side, original centred, the border generated
    ZOOM_OUT_1_5X = "zoom_out_1.5x"  # canvas 1.5x each side
    MAKE_SQUARE = "make_square"  # canvas max(w, h) square, original centred
    PAN_LEFT = "pan_left"  # canvas grows by half the width on the left
    PAN_RIGHT = "pan_right"
    PAN_UP = "pan_up"  # canvas grows by half the height at the top
    PAN_DOWN = "pan_down"

    @property
    def needs_image(self) -> bool:
        return self is not Operation.TXT2IMG

    @property
    def is_outpaint(self) -> bool:
        return self in OUTPAINT_OPERATIONS

    @property
    def is_upscale(self) -> bool:
        return self in (Operation.UPSCALE_SUBTLE, Operation.UPSCALE_CREATIVE)


OUTPAINT_OPERATIONS = frozenset(
    {
        Operation.ZOOM_OUT_2X,
        Operation.ZOOM_OUT_1_5X,
        Operation.MAKE_SQUARE,
        Operation.PAN_LEFT,
        Operation.PAN_RIGHT,
        Operation.PAN_UP,
        Operation.PAN_DOWN,
    }
)

VARY_SUBTLE_STRENGTH = 0.35
"""Vary (Subtle): keeps composition, colours and most shapes; changes texture and small details."""
VARY_STRONG_STRENGTH = 0.75
"""Vary (Strong): keeps the rough layout and palette; subjects and details are re-imagined."""
UPSCALE_SUBTLE_STRENGTH = 0.2
"""Upscale (Subtle): the 2x Lanczos resize is only sharpened; nothing new is invented."""
UPSCALE_CREATIVE_STRENGTH = 0.45
"""Upscale (Creative): the 2x resize gets new, finer detail (may change small features)."""
UPSCALE_FACTOR = 2


@dataclass(frozen=True)
class GenerationRequest:
    """What to draw. Sizes are final pixel sizes (multiples of 8); ``seed`` is the job seed.

    Tile ``i`` of the result uses seed ``tile_seeds(seed, n)[i]`` (see ``engine.seeds``), so one tile
    can be reproduced on its own.

    With ``prompt_parts``, ``prompt`` is the plain reading (the positive parts) and ``negative_prompt``
    holds only ``--no``: an engine that weights prompts encodes the parts, one that cannot uses
    ``engine.weights.plain_prompts``.
    """

    prompt: str
    width: int
    height: int
    steps: int
    seed: int
    negative_prompt: str = ""
    n: int = TILE_COUNT
    guidance: float = 7.0
    operation: Operation = Operation.TXT2IMG
    init_image: Image.Image | None = field(default=None, compare=False)
    strength: float = 0.6  # IMG2IMG only: 0 keeps the init image, 1 ignores it (other ops use their own)
    model: str | None = None  # a model alias of the engine's registry; None = the engine's default
    tile: bool = False  # seamless texture: circular padding on every conv layer
    stop: float = 1.0  # --stop: fraction (0.1-1.0) of the denoising steps to run, then decode the x0 estimate
    chaos: int = 0  # --chaos 0-100: how much the tiles differ (engine.chaos)
    prompt_parts: tuple[
        tuple[str, float], ...
    ] = ()  # `::` weights; () = ``prompt`` unweighted (engine.weights)


ENGINE_SECONDS = "engine_seconds"
"""``image.info`` key: the device seconds of the job that made this image. An engine that runs several jobs
in one batched call sets it on every image to the job's share (the call's time split by image count), so
the bot charges each user their share, not the whole batch's wall time (``engine_seconds_of``)."""


def engine_seconds_of(images: list[Image.Image]) -> float | None:
    """The ``ENGINE_SECONDS`` an engine recorded on a result, or None when it recorded none."""
    value = images[0].info.get(ENGINE_SECONDS) if images else None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


@dataclass(frozen=True)
class ProgressUpdate:
    """One denoising step done. ``preview`` is a small JPEG of the first tile, or None."""

    step: int
    total: int
    preview: bytes | None = None


ProgressCallback = Callable[[ProgressUpdate], None]
"""Called on the event loop thread (engines that work in threads hop back before calling it)."""


class CancelToken:
    """Set from any thread; a running engine stops at its next denoising step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class EngineError(Exception):
    """The engine could not make the images. ``str(error)`` is safe to show to a user."""


class EngineCancelled(EngineError):
    """The job's ``CancelToken`` was set; no images were made."""


class EngineOutOfMemory(EngineError):
    """The device ran out of memory for this request."""


FLAGGED_MESSAGE = "the safety filter flagged the result"


class EngineFlagged(EngineError):
    """The safety checker flagged the result: the whole job is refused and no image is returned.

    It is the content, not the engine: another engine would refuse it too, so it is never retried elsewhere.
    """

    def __init__(self, message: str = FLAGGED_MESSAGE) -> None:
        super().__init__(message)


class EngineUnavailable(EngineError):
    """The engine could not be reached or lost the job; the same request may be retried on another engine."""


ALL_OPERATIONS = frozenset(Operation)


class EngineUnsupported(EngineError):
    """No engine here can do the request's operation (a backend that cannot inpaint, say); never retried."""


def supported_operations(engine: object) -> frozenset[Operation]:
    """What ``engine`` can do: its ``operations`` attribute when it has one, else everything (our own engines)."""
    operations = getattr(engine, "operations", None)
    return ALL_OPERATIONS if operations is None else frozenset(operations)


def unsupported_message(operation: Operation) -> str:
    """The short answer a user gets when no configured engine can do ``operation``."""
    label = operation.value.replace("_", " ")
    return f"The image backend configured here cannot do {label}; nothing was queued or charged."


@runtime_checkable
class Engine(Protocol):
    """An image generator with a fixed number of concurrent slots."""

    name: str

    @property
    def slots(self) -> int:
        """How many requests may run at once (the scheduler starts this many workers)."""
        ...

    async def start(self) -> None:
        """Load models / connect. Called once before the first ``generate``."""

    async def close(self) -> None:
        """Release models / connections."""

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        """Make ``request.n`` images; raises ``EngineError`` (or a subclass) on failure."""
        ...
