"""Helpers shared by the engine tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.base import GenerationRequest


def small_request(**overrides: object) -> GenerationRequest:
    """A request the tiny model answers quickly (64², 3 steps, seed 42, 4 images); modules adjust the defaults
    with ``functools.partial`` and tests override what they are about."""
    values: dict[str, object] = {
        "prompt": "a red fox",
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 42,
        "n": 4,
    }
    return GenerationRequest(**{**values, **overrides})  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    """Signed pixels, so differences of two images do not wrap around."""
    return np.asarray(image, dtype=np.int16)
