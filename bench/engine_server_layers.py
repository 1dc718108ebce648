"""What each API layer of the engine server adds per job over calling the engine directly, and the latency
of a result-cache hit.

    .venv/bin/python bench/engine_server_layers.py --jobs 10

How: one tiny random-weight SD1.x pipeline on CPU (``engine.tiny``), one ``LocalDiffusersEngine``; the server
(``engine.server.create_app``, in-memory SQLite job store) on a real local port in the same process, called
over HTTP with aiohttp. Each layer runs ``--jobs`` jobs one after another (64², ``--steps`` steps, one image,
a new seed each, so the cache never answers), after one untimed warm-up job:

* direct      ``engine.generate(request)``
* remote      ``RemoteEngine.generate`` (POST /images/jobs, WebSocket events, GET the PNG): what the bot does
* sync        ``POST /images/jobs?wait=60`` with ``cache=false``, then GET the PNG
* a1111       ``POST /sdapi/v1/txt2img`` (base64 PNG in the answer)
* openai      ``POST /v1/images/generations`` with ``response_format=b64_json``
* cache hit   ``POST /images/jobs?wait=60`` repeating one earlier request (same seed), then GET the PNG

Printed: median and p90 wall ms per job, and the median overhead over ``direct``. Client and server share one
event loop and the machine's cores, so the overhead includes both sides' HTTP and JSON work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import torch  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from engine.base import GenerationRequest  # noqa: E402
from engine.local import LocalDiffusersEngine  # noqa: E402
from engine.remote import RemoteEngine  # noqa: E402
from engine.server import create_app  # noqa: E402
from engine.tiny import save_tiny_pipeline  # noqa: E402

TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def timed(runs: int, job: Callable[[int], Awaitable[None]]) -> list[float]:
    await job(10_000)  # warm-up, not timed
    times = []
    for index in range(runs):
        started = time.perf_counter()
        await job(index)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def main(jobs: int, steps: int) -> None:
    folder = save_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny")
    engine = LocalDiffusersEngine(str(folder), device="cpu")
    server = TestServer(
        create_app(engine, token=TOKEN, model_name="tiny", default_steps=steps), host="127.0.0.1"
    )
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    remote = RemoteEngine(base, TOKEN, poll_interval=0.05)
    session = aiohttp.ClientSession(headers=AUTH)
    for _ in range(600):
        if await remote.health():
            break
        await asyncio.sleep(0.05)

    def request(seed: int) -> GenerationRequest:
        return GenerationRequest(prompt="a red fox", width=64, height=64, steps=steps, seed=seed, n=1)

    def body(seed: int, **extra: object) -> dict[str, object]:
        return {
            "prompt": "a red fox",
            "width": 64,
            "height": 64,
            "steps": steps,
            "seed": seed,
            "n": 1,
            **extra,
        }

    async def direct(i: int) -> None:
        await engine.generate(request(1_000 + i))

    async def via_remote(i: int) -> None:
        await remote.generate(request(2_000 + i))

    async def sync(i: int, seed_base: int = 3_000, cache: bool = False) -> None:
        async with session.post(
            f"{base}/images/jobs?wait=60", json=body(seed_base + i, cache=cache)
        ) as response:
            snapshot = await response.json()
        assert snapshot["state"] == "SUCCEEDED", snapshot
        async with session.get(base + snapshot["images"][0]) as image:
            await image.read()

    async def a1111(i: int) -> None:
        payload = {"prompt": "a red fox", "width": 64, "height": 64, "steps": steps, "seed": 4_000 + i}
        async with session.post(f"{base}/sdapi/v1/txt2img", json=payload) as response:
            assert response.status == 200 and (await response.json())["images"]

    async def openai(i: int) -> None:
        payload = {"prompt": f"a red fox {i}", "size": "64x64", "response_format": "b64_json"}
        async with session.post(f"{base}/v1/images/generations", json=payload) as response:
            assert response.status == 200 and (await response.json())["data"]

    async def cache_hit(i: int) -> None:
        await sync(0, seed_base=5_000, cache=True)

    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__} "
        f"threads={torch.get_num_threads()}, python {platform.python_version()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"tiny pipeline, CPU, 64x64, {steps} steps, 1 image, {jobs} jobs per layer, sequential\n")
    print(f"{'layer':<10} {'median ms':>10} {'p90 ms':>10} {'over direct':>12}", flush=True)
    await sync(0, seed_base=5_000, cache=True)  # the result the cache answers with
    layers = {
        "direct": direct,
        "remote": via_remote,
        "sync": sync,
        "a1111": a1111,
        "openai": openai,
        "cache hit": cache_hit,
    }
    baseline = 0.0
    for name, job in layers.items():
        times = await timed(jobs, job)
        ordered = sorted(times)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        median = statistics.median(times)
        baseline = baseline or median
        print(f"{name:<10} {median:>10.1f} {p90:>10.1f} {median - baseline:>+12.1f}", flush=True)
    async with session.get(f"{base}/metrics") as response:
        hits = [
            line
            for line in (await response.text()).splitlines()
            if line.startswith("imaginebot_engine_cache_hits_total")
        ]
    await session.close()
    await remote.close()
    await server.close()
    print(f"\n{hits[0] if hits else 'no cache metric'} (after the cache-hit layer)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.steps))
