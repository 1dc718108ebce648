"""The engine's ``torch.compile`` path on the CPU: does it compile at start-up, serve without compiling
again, and give the images eager mode gives?

    .venv/bin/python bench/compile_cpu.py

How: a tiny random SD1.x pipeline (``engine.tiny``) saved to a temporary folder; two
``LocalDiffusersEngine``s on it, one eager and one with ``compile_unet=True`` (mode ``default``) and one
start-up bucket (``--rows`` rows: a grid of 4 images). Each engine gets the same grid job (same seed,
``--steps`` steps, CFG 7) ``--jobs`` times. It prints: the start-up time of each engine (model load, plus the
compile for the compiled one), seconds per job (best of the jobs after the first), how many graphs TorchDynamo
compiled while serving (0 = every serving call hit the start-up kernels), and the largest pixel difference
between the two engines' images (0–255; float kernels reorder sums, so a few levels are expected).

This checks the code path, not GPU speed: on a tiny model on 2 CPU cores the compiled UNet gains little.
The H200 figures come from ``bench/gpu.sh`` (``bench/engine_throughput.py --gpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from engine.base import GenerationRequest  # noqa: E402
from engine.local import LocalDiffusersEngine  # noqa: E402
from engine.registry import ModelRegistry  # noqa: E402
from engine.tiny import save_tiny_pipeline  # noqa: E402


async def serve(engine: LocalDiffusersEngine, jobs: int, steps: int, size: int) -> tuple[list[float], list]:
    times, images = [], []
    for _ in range(jobs):
        request = GenerationRequest(
            prompt="a red fox in the snow", width=size, height=size, steps=steps, seed=7
        )
        started = time.perf_counter()
        images = await engine.generate(request)
        times.append(time.perf_counter() - started)
    return times, images


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        model = save_tiny_pipeline(Path(folder) / "tiny")
        results = {}
        for name, compiled in (("eager", False), ("compiled", True)):
            engine = LocalDiffusersEngine(
                str(model),
                "cpu",
                registry=ModelRegistry.single(str(model), resolution=args.size),  # the start-up size
                max_batch=1,
                compile_unet=compiled,
                compile_buckets=[args.rows] if compiled else None,
                compile_cache_dir=Path(folder) / "inductor-cache",
            )
            started = time.perf_counter()
            await engine.start()
            start_seconds = time.perf_counter() - started
            graphs_before = counters["stats"]["unique_graphs"]
            times, images = await serve(engine, args.jobs, args.steps, args.size)
            graphs = counters["stats"]["unique_graphs"] - graphs_before
            await engine.close()
            results[name] = (start_seconds, min(times[1:] or times), graphs, images)

    print(f"compile_cpu: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"tiny SD1.x, {args.size}², {args.steps} steps, CFG 7, a grid of 4, {args.jobs} jobs per engine")  # fmt: skip
    for name, (start_seconds, per_job, graphs, _) in results.items():
        print(f"  {name:9s} start-up {start_seconds:6.1f} s   per job {per_job:.3f} s   "
              f"graphs compiled while serving: {graphs if name == 'compiled' else '-'}")  # fmt: skip
    eager, compiled = results["eager"][3], results["compiled"][3]
    difference = max(
        int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
        for a, b in zip(eager, compiled, strict=True)
    )
    print(f"  largest pixel difference eager vs compiled: {difference} of 255")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=4, help="the start-up bucket: image rows per UNet call")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
