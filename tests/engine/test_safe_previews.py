"""Previews with the safety checker on (issue 15 item 15): obscured before they leave the engine."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.base import ProgressUpdate
from engine.local import LocalDiffusersEngine
from engine.safety import obscure_preview
from engine.tiny import build_tiny_safety_checker
from tests.engine.support import small_request


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)


def test_an_obscured_preview_keeps_its_size_and_colours_but_no_detail():
    rng = np.random.default_rng(0)
    detail = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # pure high-frequency content
    detail[:, :32] //= 4  # a dark left half: the coarse layout that may stay
    original = _jpeg(Image.fromarray(detail))
    obscured = _pixels(obscure_preview(original))
    assert obscured.shape == (64, 64, 3)
    assert obscured[:, :24].mean() < obscured[:, 40:].mean()  # the layout survives
    # neighbouring pixels differ by a fraction of what they did: the noise (the detail) is gone
    original_steps = np.abs(np.diff(_pixels(original), axis=1)).mean()
    obscured_steps = np.abs(np.diff(obscured, axis=1)).mean()
    assert obscured_steps < original_steps / 10


async def test_with_a_checker_every_preview_is_obscured(tiny_model_dir, tiny_engine):
    request = small_request(n=1, steps=3)
    plain: list[ProgressUpdate] = []
    await tiny_engine.generate(request, plain.append)
    engine = LocalDiffusersEngine(
        str(tiny_model_dir), device="cpu", safety_checker=build_tiny_safety_checker(), preview_interval=0
    )
    await engine.start()
    try:
        checked: list[ProgressUpdate] = []
        await engine.generate(request, checked.append)
    finally:
        await engine.close()
    assert [u.step for u in checked] == [u.step for u in plain] == [1, 2, 3]
    assert all(u.preview for u in plain)
    assert [u.preview for u in checked] == [obscure_preview(u.preview) for u in plain if u.preview]
