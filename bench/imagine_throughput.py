"""End-to-end /imagine throughput: N jobs through the real bot, the Discord emulator and the tiny pipeline.

How it measures: the emulator and the bot run on one event loop in this process (as in the e2e tests);
a tiny random-weight SD1.x pipeline is saved to a temp folder and loaded through ``MODEL``. All N
``/imagine`` commands are sent at once (from ``--users`` users in turn); each job's latency is the wall
time from sending the command to the moment its message shows the final grid with buttons. Discord
requests are every HTTP request the emulator answered during the run, divided by N.

    .venv/bin/python bench/imagine_throughput.py --jobs 20 --resolution 64 --steps 4
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def route_kind(method: str, path: str) -> str:
    path = re.sub(r"/\d+", "/{id}", path)
    path = re.sub(r"/webhooks/\{id\}/[^/]+", "/webhooks/{id}/{token}", path)
    path = re.sub(r"/interactions/\{id\}/[^/]+", "/interactions/{id}/{token}", path)
    return f"{method} {path}"


async def main(args: argparse.Namespace) -> None:
    import torch

    from engine.tiny import save_tiny_pipeline
    from sandbox.discord_emulator import DiscordEmulator
    from tests.e2e.harness import bot_settings, is_final_grid, running_bot

    emu = DiscordEmulator()
    await emu.start()
    users = [emu.default_user] + [emu.add_user(f"user{i}") for i in range(1, args.users)]
    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_tiny_pipeline(Path(folder) / "model")
        settings = bot_settings(
            emu,
            model_dir,
            Path(folder) / "data",
            model_resolution=args.resolution,
            model_steps=args.steps,
            progress_edit_interval=args.edit_interval,
        )
        async with running_bot(settings, emu):
            first_request = len(emu.requests)
            latencies: list[float] = []
            started = time.perf_counter()

            async def one(index: int) -> None:
                sent = time.perf_counter()
                ix = await emu.invoke_slash(
                    "imagine",
                    {"prompt": f"benchmark prompt {index} --seed {index}"},
                    user=users[index % len(users)],
                )
                await ix.wait_for_response(3)
                await emu.wait_for(
                    lambda: is_final_grid(emu.get_message(ix.response_message_id)), timeout=args.timeout
                )
                latencies.append(time.perf_counter() - sent)

            await asyncio.gather(*(one(i) for i in range(args.jobs)))
            elapsed = time.perf_counter() - started
            requests = emu.requests[first_request:]
    await emu.stop()

    kinds = collections.Counter(route_kind(r.method, r.path) for r in requests)
    print(
        "imagine_throughput: N /imagine jobs sent at once through real discord.py ↔ emulator, tiny SD1.x pipeline"
    )
    print(
        f"  machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device cpu"
    )
    print(
        f"  jobs={args.jobs} users={args.users} resolution={args.resolution} steps={args.steps} "
        f"edit_interval={args.edit_interval}s tiles/job=4"
    )
    print(f"  wall time        {elapsed:.2f} s")
    print(f"  throughput       {args.jobs / elapsed:.2f} jobs/s ({4 * args.jobs / elapsed:.1f} images/s)")
    print(
        f"  command→grid     p50 {percentile(latencies, 0.5):.2f} s   p95 {percentile(latencies, 0.95):.2f} s   "
        f"max {max(latencies):.2f} s"
    )
    print(f"  Discord requests {len(requests) / args.jobs:.2f} per job ({len(requests)} total)")
    for kind, count in kinds.most_common():
        print(f"    {count / args.jobs:6.2f}/job  {kind}")
    print(
        f"  429s received    {sum(1 for r in requests if r.status == 429)}   violations {len(emu.violations)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--edit-interval", type=float, default=1.5, help="PROGRESS_EDIT_INTERVAL")
    parser.add_argument("--timeout", type=float, default=600)
    asyncio.run(main(parser.parse_args()))
