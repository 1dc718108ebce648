"""Pixel sizes for an aspect ratio at a model's native resolution."""

import math

SIZE_MULTIPLE = 8
"""Latent diffusion models need sides divisible by the VAE scale factor (8)."""


def size_for_aspect(resolution: int, ratio_w: int, ratio_h: int) -> tuple[int, int]:
    """Width and height with about ``resolution**2`` pixels and the ratio ``ratio_w:ratio_h``.

    Sides are rounded to multiples of 8 and never below 8, so 3:2 at 512 gives 624x416.
    """
    if ratio_w <= 0 or ratio_h <= 0 or resolution <= 0:
        raise ValueError("resolution and ratio must be positive")
    area = resolution * resolution
    width = math.sqrt(area * ratio_w / ratio_h)
    height = width * ratio_h / ratio_w
    return _round_side(width), _round_side(height)


def _round_side(side: float) -> int:
    return max(SIZE_MULTIPLE, int(round(side / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
