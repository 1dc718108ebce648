"""What obscuring previews costs when the safety checker is on (engine.safety.obscure_preview).

Times ``encode_preview`` (the JPEG every preview already costs, engine.previews) and ``obscure_preview`` on
top of it, for a random 64x64 latent-sized RGB upscaled x8 to 512x512 (the SD1.5 preview size), over
``--repeat`` runs each, and prints the mean milliseconds and the sizes in bytes.

    .venv/bin/python bench/obscured_previews.py --repeat 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from engine.previews import encode_preview
from engine.safety import obscure_preview


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    preview = encode_preview(rgb)
    for name, work in (
        ("encode_preview", lambda: encode_preview(rgb)),
        ("obscure_preview", lambda: obscure_preview(preview)),
    ):
        started = time.perf_counter()
        for _ in range(args.repeat):
            work()
        print(
            f"{name:16s} {(time.perf_counter() - started) / args.repeat * 1000:6.2f} ms per 512x512 preview"
        )
    print(f"sizes: preview {len(preview)} bytes, obscured {len(obscure_preview(preview))} bytes")


if __name__ == "__main__":
    main()
