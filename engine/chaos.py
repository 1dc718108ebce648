"""``--chaos``: how much the four tiles of a grid differ from each other (torch-free).

Tiles always differ by seed. Chaos 0..100 adds two spreads, both linear in ``c = chaos / 100`` and
deterministic, so a job gives the same grid every time:

- guidance: tile ``i`` of ``n`` gets ``base + (2i/(n-1) - 1) * 3.0 * c`` (4 tiles at chaos 100 and base
  7: 4, 6, 8, 10), never below ``min(base, 1.5)``; with guidance off (base <= 1) there is no spread, so
  classifier-free guidance stays off;
- prompt-embedding noise: every tile but tile 0 gets Gaussian noise of ``0.3 * c`` times the embedding's
  own standard deviation, drawn from a generator seeded with that tile's seed (``engine.conditioning``).
  Tile 0 stays the faithful reading of the prompt.

The local engine applies this to every operation that makes several images (text-to-image, image
prompts, Vary, Zoom/Pan/Make Square); an upscale makes one image, which is tile 0.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CHAOS = 100
MAX_CHAOS_GUIDANCE_SPREAD = 3.0
"""At --chaos 100 the tiles' guidance spans base ± 3.0."""
MAX_CHAOS_EMBEDDING_NOISE = 0.3
"""At --chaos 100 each tile but the first gets prompt-embedding noise of 0.3 σ."""
CHAOS_GUIDANCE_FLOOR = 1.5


@dataclass(frozen=True)
class TileChaos:
    """How one tile departs from the plain prompt: its guidance scale and its relative embedding noise."""

    guidance: float
    embedding_noise: float


def chaos_for_tiles(chaos: int | None, guidance: float, tiles: int = 4) -> tuple[TileChaos, ...]:
    """Per-tile settings for ``--chaos`` (None or 0: ``tiles`` identical settings at ``guidance``)."""
    c = min(max(chaos or 0, 0), MAX_CHAOS) / MAX_CHAOS
    spread = MAX_CHAOS_GUIDANCE_SPREAD * c if guidance > 1.0 else 0.0
    floor = min(guidance, CHAOS_GUIDANCE_FLOOR)
    out = []
    for i in range(tiles):
        offset = 0.0 if tiles == 1 else (2 * i / (tiles - 1) - 1) * spread
        noise = 0.0 if i == 0 else MAX_CHAOS_EMBEDDING_NOISE * c
        out.append(
            TileChaos(guidance=round(max(floor, guidance + offset), 3), embedding_noise=round(noise, 4))
        )
    return tuple(out)
