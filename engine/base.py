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


class Operation(StrEnum):
    TXT2IMG = "txt2img"  # text only
    IMG2IMG = "img2img"  # starts from ``init_image``, keeps ``1 - strength`` of it


@dataclass(frozen=True)
class GenerationRequest:
    """What to draw. Sizes are final pixel sizes (multiples of 8); ``seed`` is the job seed.

    Tile ``i`` of the result uses seed ``tile_seeds(seed, n)[i]`` (see ``engine.seeds``), so one tile
    can be reproduced on its own.
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
    strength: float = 0.6  # img2img only: 0 keeps the init image, 1 ignores it


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


@runtime_checkable
class Engine(Protocol):
    """An image generator with a fixed number of concurrent slots."""

    name: str
    slots: int

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
