"""Load: many simulated users submitting /imagine through the Discord emulator, with Discord's rate limits on.

How it measures: the emulator (which enforces Discord-like rate limits: global 50/s, webhook edits 5 per 2 s
per token, channel edits 5 per 5 s per channel, see sandbox/discord_emulator/ratelimit.py) and the real bot
run on one event loop in this process, with a tiny random-weight SD1.x pipeline loaded through ``MODEL``
and ``ENGINE_BATCH_MAX`` jobs per denoising call. ``--users`` users each send ``/imagine`` once (default
tier, "free": one running and three queued jobs per user, so no one is refused), at Poisson arrival times
over ``--window`` seconds, all in one channel. Per job, on the emulator's clock:

* first feedback: command sent → the first state of its message with visible text after the deferral
  ("(Waiting to start)", a progress edit or the result, whichever comes first);
* first preview: command sent → the first progress state ("(NN%)"); includes the wait in the queue;
* done: command sent → the final grid with its buttons.

Edits per job are the PATCH requests the bot made to job messages (webhook or channel), divided by jobs;
progress edits per job are the progress states the messages went through. 429s are the emulator's natural
rate-limit answers (``rate_limit_hits``); violations are protocol violations.

    .venv/bin/python bench/load_users.py --users 200 --window 60 --steps 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PROGRESS = re.compile(r"\(\d+%\)")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def main(args: argparse.Namespace) -> None:
    import torch

    from engine.tiny import save_tiny_pipeline
    from sandbox.discord_emulator import DiscordEmulator
    from tests.e2e.harness import bot_settings, is_final_grid, running_bot

    rng = random.Random(args.seed)
    emu = DiscordEmulator()
    await emu.start()
    users = [emu.default_user] + [emu.add_user(f"user{i}") for i in range(1, args.users)]
    arrivals, t = [], 0.0
    for _ in range(args.users):  # a Poisson process of rate users/window
        t += rng.expovariate(args.users / args.window)
        arrivals.append(t)
    records: list[dict[str, float | int]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_tiny_pipeline(Path(folder) / "model")
        settings = bot_settings(
            emu,
            model_dir,
            Path(folder) / "data",
            model_resolution=args.resolution,
            model_steps=args.steps,
            engine_batch_max=args.batch,
            progress_edit_interval=args.edit_interval,
            progress_edits_per_second=args.edits_per_second,
            log_level="WARNING",
        )
        async with running_bot(settings, emu) as runner:
            budget = runner.bot.jobs.presenter.budget  # type: ignore[union-attr]
            first_request = len(emu.requests)
            first_hit = len(emu.rate_limit_hits)
            started = time.perf_counter()
            peak_running = 0

            async def watch() -> None:
                nonlocal peak_running
                while True:
                    peak_running = max(peak_running, budget.running)
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())

            async def one(index: int) -> None:
                await asyncio.sleep(max(0.0, arrivals[index] - (time.perf_counter() - started)))
                sent = emu.clock.now()
                ix = await emu.invoke_slash(
                    "imagine", {"prompt": f"load test prompt {index} --seed {index}"}, user=users[index]
                )
                try:
                    await ix.wait_for_response(3)
                    await emu.wait_for(
                        lambda: is_final_grid(emu.get_message(ix.response_message_id)), timeout=args.timeout
                    )
                except TimeoutError:
                    failures.append(f"job {index}: no final grid within {args.timeout}s")
                    return
                records.append({"sent": sent, "message": ix.response_message_id})

            await asyncio.gather(*(one(i) for i in range(args.users)))
            elapsed = time.perf_counter() - started
            watcher.cancel()
            requests = emu.requests[first_request:]
            hits = emu.rate_limit_hits[first_hit:]
    await emu.stop()

    first_feedback, first_preview, done, progress_counts, progress_times = [], [], [], [], []
    for record in records:
        message = emu.get_message(int(record["message"]))
        history = message.history
        visible = [h["time"] for h in history if h["content"]]
        progress = [h["time"] for h in history if PROGRESS.search(h["content"] or "")]
        final = [h["time"] for h in history if len(h["custom_ids"]) == 9]
        first_feedback.append(visible[0] - record["sent"])
        if progress:
            first_preview.append(progress[0] - record["sent"])
        done.append(final[0] - record["sent"])
        progress_counts.append(len(progress))
        progress_times += progress
    edits = [r for r in requests if r.method == "PATCH" and "/messages/" in r.path]
    jobs = len(records)

    print(
        "load_users: simulated users sending /imagine through real discord.py ↔ emulator (Discord rate limits on)"
    )
    print(
        f"  machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device cpu, tiny random-weight SD1.x pipeline"
    )
    print(
        f"  users={args.users} (1 job each, default tier), Poisson arrivals over {args.window:.0f} s "
        f"(seed {args.seed}), resolution={args.resolution} steps={args.steps} ENGINE_BATCH_MAX={args.batch}"
    )
    print(
        f"  PROGRESS_EDIT_INTERVAL={args.edit_interval}s PROGRESS_EDITS_PER_SECOND={args.edits_per_second} "
        f"(peak jobs editing at once: {peak_running}, → interval up to "
        f"{max(args.edit_interval, peak_running / args.edits_per_second):.2f}s)"
    )
    print(f"  wall time          {elapsed:.1f} s (last arrival at {arrivals[-1]:.1f} s)")
    print(f"  jobs finished      {jobs}/{args.users}   throughput {jobs / elapsed:.2f} jobs/s")
    print(
        f"  first feedback     p50 {percentile(first_feedback, 0.5):.2f} s   "
        f"p95 {percentile(first_feedback, 0.95):.2f} s   max {max(first_feedback):.2f} s"
    )
    if first_preview:
        print(
            f"  first preview      p50 {percentile(first_preview, 0.5):.2f} s   "
            f"p95 {percentile(first_preview, 0.95):.2f} s   ({len(first_preview)} jobs showed one)"
        )
    print(
        f"  command→grid       p50 {percentile(done, 0.5):.2f} s   p95 {percentile(done, 0.95):.2f} s   "
        f"max {max(done):.2f} s"
    )
    print(
        f"  edits per job      {len(edits) / jobs:.2f} PATCH requests "
        f"({sum(progress_counts) / jobs:.2f} progress states); Discord requests per job {len(requests) / jobs:.2f}"
    )
    print(
        f"  progress edits     max {max_in_window(progress_times, 1.0)} in any 1 s, "
        f"{max_in_window(progress_times, 5.0)} in any 5 s (budget: burst 10 + {args.edits_per_second:g}/s)"
    )
    print(
        f"  429s received      {len(hits)}   violations {len(emu.violations)}   unhandled {len(emu.unhandled)}"
    )
    for hit in hits[:5]:
        print(f"    429 {hit}")
    for failure in failures[:5]:
        print(f"  FAILED {failure}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which users arrive")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="ENGINE_BATCH_MAX")
    parser.add_argument("--edit-interval", type=float, default=1.5, help="PROGRESS_EDIT_INTERVAL")
    parser.add_argument("--edits-per-second", type=float, default=20.0, help="PROGRESS_EDITS_PER_SECOND")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    asyncio.run(main(parser.parse_args()))
