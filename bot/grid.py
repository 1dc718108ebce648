"""The 2x2 grid of a four-image job, and fitting an image under Discord's upload limit."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


def make_grid(images: Sequence[Image.Image]) -> Image.Image:
    """Tiles in reading order: 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right (as U1–U4)."""
    if not images:
        raise ValueError("a grid needs at least one image")
    width, height = images[0].size
    columns = 2 if len(images) > 1 else 1
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (width * columns, height * rows))
    for index, image in enumerate(images):
        tile = image if image.size == (width, height) else image.resize((width, height))
        grid.paste(tile.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return grid


def encode_for_upload(image: Image.Image, limit: int = DEFAULT_UPLOAD_LIMIT) -> tuple[bytes, str]:
    """PNG when it fits, else a high-quality JPEG, shrinking until it fits. Returns (bytes, extension)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    if buffer.tell() <= limit:
        return buffer.getvalue(), "png"
    candidate = image.convert("RGB")
    while True:
        buffer = io.BytesIO()
        candidate.save(buffer, format="JPEG", quality=90)
        if buffer.tell() <= limit or min(candidate.size) <= 64:
            return buffer.getvalue(), "jpg"
        candidate = candidate.resize((candidate.width * 3 // 4, candidate.height * 3 // 4))
