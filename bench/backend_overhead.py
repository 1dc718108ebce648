"""The time the bot adds per job in front of each third-party backend kind (A1111, ComfyUI, Replicate-style).

How it measures: the Discord emulator and the real bot (discord.py) run on one event loop in this process, as
in the e2e tests; the fake backend (``tests/fakes/<kind>.py``) runs as its own process with a per-step delay
standing in for the GPU. ``--jobs`` ``/imagine`` commands are sent one after the other (each waits for the
previous job to have ended), so the backend runs one job at a time and nothing queues. For each job:

    overhead = (command → final grid in the emulator) − (the backend's own generation time)

where the backend's time is what the fake measured from starting the job to having its result ready
(``GET /_fake/durations``, a route only the fakes have). The overhead is everything the bot adds: admission,
the database, scheduling, the adapter's HTTP calls and polling, downloading and decoding results, storing
them, composing the grid and the Discord requests. Polling adapters add up to one poll interval by design
(A1111 and Replicate poll every ``--poll`` seconds; ComfyUI pushes over its WebSocket).

    .venv/bin/python bench/backend_overhead.py --jobs 5 --steps 20 --step-delay 0.02
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = ("a1111", "comfyui", "replicate")


async def measure(kind: str, args: argparse.Namespace, folder: Path) -> tuple[list[float], list[float]]:
    import aiohttp

    from sandbox.discord_emulator import DiscordEmulator
    from tests.e2e import test_backend_adapters as e2e
    from tests.e2e.harness import is_final_grid, wait_for_message
    from tests.e2e.test_imagine_flow import _all_terminal

    emu = DiscordEmulator()
    await emu.start()
    backend = e2e.FakeBackend(kind, folder / f"{kind}.log", step_delay=args.step_delay, poll=args.poll)
    await backend.start()
    latencies: list[float] = []
    try:
        async with e2e.bot_on(
            emu, [backend], folder / f"data-{kind}", progress_edit_interval=args.edit_interval
        ) as (bot, _engine):
            for index in range(args.jobs + 1):  # the first job warms up connections and is not counted
                started = time.perf_counter()
                ix = await emu.invoke_slash("imagine", {"prompt": f"a fox {index} --steps {args.steps}"})
                await wait_for_message(
                    emu, lambda m, ix=ix: m.id == ix.response_message_id and is_final_grid(m), timeout=120
                )
                latencies.append(time.perf_counter() - started)
                # the next command only once this job has fully ended (its slot is free again)
                await emu.wait_for(lambda: _all_terminal(bot), timeout=60, what="the job to end")
                await asyncio.sleep(args.gap)  # let Discord's per-channel edit buckets refill
        async with aiohttp.ClientSession() as session:
            async with session.get(backend.url + "/_fake/durations") as response:
                durations = [float(d) for d in await response.json()]
    finally:
        await backend.stop()
        await emu.stop()
    return latencies[1:], durations[1:]


def main(args: argparse.Namespace) -> None:
    print(
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
        f"jobs per kind {args.jobs} (+1 warm-up), steps {args.steps}, fake step delay {args.step_delay}s, "
        f"adapter poll {args.poll}s, gap between jobs {args.gap}s, "
        f"PROGRESS_EDIT_INTERVAL {args.edit_interval}s, 64x64 tiles"
    )
    print(
        f"{'backend':<10} {'cmd→grid p50':>13} {'backend p50':>12} {'overhead p50':>13} {'overhead p95':>13} {'max':>7}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.kinds:
            # each kind on a fresh event loop: nothing a previous bot left behind competes with it
            latencies, durations = asyncio.run(measure(kind, args, Path(folder)))
            overheads = sorted(lat - dur for lat, dur in zip(latencies, durations, strict=True))
            p95 = overheads[min(len(overheads) - 1, round(0.95 * (len(overheads) - 1)))]
            print(
                f"{kind:<10} {statistics.median(latencies):>12.3f}s {statistics.median(durations):>11.3f}s "
                f"{statistics.median(overheads):>12.3f}s {p95:>12.3f}s {overheads[-1]:>6.3f}s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-delay", type=float, default=0.02)
    parser.add_argument("--poll", type=float, default=0.1, help="A1111/Replicate adapter poll interval (s)")
    parser.add_argument(
        "--edit-interval",
        type=float,
        default=1.5,
        help="PROGRESS_EDIT_INTERVAL (the default 1.5; the e2e tests use 0.2, which meets Discord's "
        "5-edits-per-2-s webhook bucket on short jobs, so the grid edit waits for it)",
    )
    parser.add_argument(
        "--gap", type=float, default=0.0, help="seconds between jobs (Discord's edit rate limits refill)"
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    main(parser.parse_args())
