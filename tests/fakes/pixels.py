"""Deterministic stand-in images for the fake backends: a colour from (prompt, seed), a stripe per step.

Different seeds give different images, the same seed the same image (so failover and reproduction can be
checked), and img2img keeps ``1 - strength`` of its init image.
"""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
from PIL import Image


def colour(prompt: str, seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


def fake_image(
    prompt: str,
    seed: int,
    width: int,
    height: int,
    *,
    init: Image.Image | None = None,
    strength: float = 1.0,
    mask: Image.Image | None = None,
) -> Image.Image:
    pixels = np.empty((height, width, 3), dtype=np.float32)
    pixels[:] = colour(prompt, seed)
    pixels[:, : max(1, width // 16)] = (seed % 7) * 30  # a stripe: seeds with one colour still differ
    if init is not None:
        base = np.asarray(init.convert("RGB").resize((width, height)), dtype=np.float32)
        blended = (1 - strength) * base + strength * pixels
        if mask is not None:
            weight = np.asarray(mask.convert("L").resize((width, height)), dtype=np.float32)[..., None] / 255
            blended = (1 - weight) * base + weight * pixels
        pixels = blended
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(encode(image, fmt)).decode()
