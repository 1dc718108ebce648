"""How the four tile seeds of a grid derive from the job seed.

Tile ``i`` uses ``(seed + i) mod 2**32``: the first tile of ``--seed 42`` is the same image as a
one-image job with seed 42, and any tile can be regenerated alone (variations, upscales, failover).
"""

from engine.base import MAX_SEED


def tile_seeds(seed: int, n: int) -> list[int]:
    return [(seed + i) % (MAX_SEED + 1) for i in range(n)]
