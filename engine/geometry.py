"""Pure geometry of the image operations: canvas sizes, where the original goes, masks, tiles.

No torch here; everything is integers and PIL images, so it is cheap to test exhaustively.

Outpainting (Zoom Out, Make Square, pans) never shrinks the original: the canvas grows around it and
the original's pixels are pasted back unchanged after generation. Canvas sides are multiples of 8
(the VAE scale factor), so the original's offset is rounded to whole pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from engine.base import UPSCALE_FACTOR, Operation
from engine.sizes import SIZE_MULTIPLE

PAN_FRACTION = 0.5
"""A pan grows the canvas by half the original side in the pan direction (Midjourney adds about that)."""

MASK_KEEP = 0
MASK_GENERATE = 255


@dataclass(frozen=True)
class Layout:
    """A canvas of ``width`` x ``height`` with the original image pasted at ``(left, top)``."""

    width: int
    height: int
    left: int
    top: int
    inner_width: int
    inner_height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The original's box on the canvas, PIL style (left, top, right, bottom)."""
        return (self.left, self.top, self.left + self.inner_width, self.top + self.inner_height)


def round_up(side: float, multiple: int = SIZE_MULTIPLE) -> int:
    """``side`` rounded up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, math.ceil(round(side, 6) / multiple) * multiple)


def outpaint_layout(width: int, height: int, operation: Operation) -> Layout:
    """Where an original of ``width`` x ``height`` sits on the canvas of an outpainting operation."""
    if width <= 0 or height <= 0:
        raise ValueError("image sides must be positive")
    if operation in (Operation.ZOOM_OUT_2X, Operation.ZOOM_OUT_1_5X):
        factor = 2.0 if operation == Operation.ZOOM_OUT_2X else 1.5
        canvas_w, canvas_h = round_up(width * factor), round_up(height * factor)
        return Layout(canvas_w, canvas_h, (canvas_w - width) // 2, (canvas_h - height) // 2, width, height)
    if operation == Operation.MAKE_SQUARE:
        side = round_up(max(width, height))
        return Layout(side, side, (side - width) // 2, (side - height) // 2, width, height)
    if operation in (Operation.PAN_LEFT, Operation.PAN_RIGHT):
        canvas_w, canvas_h = round_up(width * (1 + PAN_FRACTION)), round_up(height)
        left = canvas_w - width if operation == Operation.PAN_LEFT else 0
        return Layout(canvas_w, canvas_h, left, (canvas_h - height) // 2, width, height)
    if operation in (Operation.PAN_UP, Operation.PAN_DOWN):
        canvas_w, canvas_h = round_up(width), round_up(height * (1 + PAN_FRACTION))
        top = canvas_h - height if operation == Operation.PAN_UP else 0
        return Layout(canvas_w, canvas_h, (canvas_w - width) // 2, top, width, height)
    raise ValueError(f"{operation} is not an outpainting operation")


def outpaint_mask(layout: Layout, feather: int = 0) -> Image.Image:
    """An ``L`` mask of the canvas: 255 where pixels are generated, 0 over the original.

    ``feather`` > 0 blurs the seam *into the new area only* (the original stays 0 = kept).
    """
    mask = Image.new("L", (layout.width, layout.height), MASK_GENERATE)
    mask.paste(MASK_KEEP, layout.box)
    if feather > 0:
        blurred = mask.filter(ImageFilter.GaussianBlur(feather))
        blurred.paste(MASK_KEEP, layout.box)
        mask = blurred
    return mask


def outpaint_canvas(image: Image.Image, layout: Layout) -> Image.Image:
    """The original on the canvas, the new area filled by stretching the original's edge pixels.

    The fill only seeds the colours the model starts from; it is regenerated.
    """
    rgb = np.asarray(image.convert("RGB"))
    pad = (
        (layout.top, layout.height - layout.top - layout.inner_height),
        (layout.left, layout.width - layout.left - layout.inner_width),
        (0, 0),
    )
    return Image.fromarray(np.pad(rgb, pad, mode="edge"))


def paste_original(result: Image.Image, original: Image.Image, layout: Layout) -> Image.Image:
    """``result`` (canvas sized) with the original's pixels put back exactly."""
    out = result.convert("RGB").copy()
    if out.size != (layout.width, layout.height):
        out = out.resize((layout.width, layout.height), Image.Resampling.LANCZOS)
    out.paste(original.convert("RGB"), (layout.left, layout.top))
    return out


def upscaled_size(width: int, height: int, factor: int = UPSCALE_FACTOR) -> tuple[int, int]:
    """The output size of a 2x upscale, sides rounded up to multiples of 8."""
    return round_up(width * factor), round_up(height * factor)


def output_size(
    operation: Operation, width: int, height: int, init_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The final pixel size of a request: from ``width``/``height`` or, for derived operations, the init image."""
    if operation.is_upscale or operation.is_outpaint:
        if init_size is None:
            raise ValueError(f"{operation} needs an init image")
        if operation.is_upscale:
            return upscaled_size(*init_size)
        layout = outpaint_layout(*init_size, operation)
        return layout.width, layout.height
    return width, height


def tile_boxes(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Overlapping ``tile`` x ``tile`` boxes (PIL style) covering a ``width`` x ``height`` image.

    Tiles are clipped to the image; every box side is a multiple of 8 when the inputs are.
    Row-major order; the first box is the top-left one (the one that gets previews).
    """
    if tile <= overlap:
        raise ValueError("tile must be larger than overlap")

    def starts(side: int) -> list[int]:
        if side <= tile:
            return [0]
        stride = tile - overlap
        positions = list(range(0, side - tile, stride))
        positions.append(side - tile)
        return sorted(set(positions))

    width_tile, height_tile = min(tile, width), min(tile, height)
    return [(x, y, x + width_tile, y + height_tile) for y in starts(height) for x in starts(width)]


def blend_weights(box_width: int, box_height: int, overlap: int) -> np.ndarray:
    """A ``[H, W, 1]`` float weight ramp for a tile: 1 inside, falling towards 0 over ``overlap`` pixels."""

    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, dtype=np.float32)
        if overlap > 0 and n > 2 * overlap:
            edge = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
            w[:overlap] = edge
            w[-overlap:] = edge[::-1]
        return w

    return np.outer(ramp(box_height), ramp(box_width))[:, :, None]
