"""How long one user's burst of simultaneous submits waits before each is acknowledged.

Six buttons clicked at once by one user queue on that user's admission lock (``QuotaService.lock``): each
holder admits its job and saves it before the next may start, and Discord wants every answer within 3 s.
This runs ``JobService.submit_imagine`` ``--clicks`` times at once for one user (a fresh user each round)
against a real SQLite file, and measures, per submit, the time from the call to its ``acknowledge`` (the
moment the bot would answer Discord). The scheduler is not started: no job runs, only admission and the
insert are measured.

``--load`` runs work in a thread beside the event loop, the way the in-process engine's thread competes
for the GIL while jobs run: ``pipeline`` denoises with the tiny diffusers pipeline over and over (64x64,
8 steps, one torch thread), ``python`` is pure-Python work (the worst case: it never releases the GIL
on its own).

    .venv/bin/python bench/admission_burst.py --clicks 6 --rounds 30 --load pipeline
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bot.deadline import ANSWER_BUDGET, Deadline
from bot.jobs import JobDefaults, JobService, Origin
from bot.prompt import parse_prompt
from bot.quotas import QuotaService
from bot.scheduler import Scheduler
from bot.tiers import load_tiers
from engine.base import CancelToken, GenerationRequest, ProgressCallback
from engine.tiny import build_tiny_pipeline
from storage.db import Database
from storage.images import LocalImageStore
from storage.jobs import JobRepository
from storage.ledger import LedgerRepository
from storage.users import UserRepository


class IdleEngine:
    """Never asked to generate: the scheduler is not started."""

    name = "idle"
    slots = 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[object]:
        raise AssertionError("the benchmark never runs a job")


def python_load(stop: threading.Event) -> None:
    """Pure-Python work that holds the GIL between the interpreter's switch intervals."""
    total = 0
    while not stop.is_set():
        for number in range(10_000):
            total += number * number


def pipeline_load(stop: threading.Event) -> None:
    """The tiny diffusers pipeline, denoising over and over like a busy in-process engine."""
    torch.set_num_threads(1)
    pipeline = build_tiny_pipeline()
    while not stop.is_set():
        pipeline("a fox", height=64, width=64, num_inference_steps=8, output_type="pil")


async def burst(jobs: JobService, user_id: int, clicks: int) -> list[float]:
    """Seconds from each submit's call to its acknowledgement, in the order they were acknowledged."""
    started = time.perf_counter()
    answered: list[float] = []

    async def acknowledge() -> Origin:
        answered.append(time.perf_counter() - started)
        return Origin(channel_id=1, message_id=random.randrange(1, 2**62))

    async def submit() -> None:
        try:
            await jobs.submit_imagine(
                user_id, acknowledge, parse_prompt("a fox"), answer_by=Deadline(ANSWER_BUDGET)
            )
        except TimeoutError:
            answered.append(float("inf"))  # the bot would have answered "busy"

    await asyncio.gather(*(submit() for _ in range(clicks)))
    return answered


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        database = await Database.open(
            args.database_url or f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        )
        users = UserRepository(database)
        quotas = QuotaService(users, LedgerRepository(database), load_tiers())
        jobs = JobService(
            JobRepository(database),
            LocalImageStore(Path(folder) / "images"),
            IdleEngine(),
            Scheduler(),
            JobDefaults(resolution=512, steps=20, model="bench"),
            quotas,
        )
        stop = threading.Event()
        load = {"python": python_load, "pipeline": pipeline_load}.get(args.load)
        threads = [threading.Thread(target=load, args=(stop,), daemon=True)] if load else []
        for thread in threads:
            thread.start()
        rounds: list[list[float]] = []
        try:
            for round_number in range(args.rounds + 1):
                user_id = 1000 + round_number
                await users.update(user_id, tier="pro")  # room in the queue for the whole burst
                answered = await burst(jobs, user_id, args.clicks)
                if round_number:  # the first round warms the connection pool and statement caches
                    rounds.append(answered)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            await database.close()
    last = sorted(answers[-1] for answers in rounds)
    each = sorted(answer for answers in rounds for answer in answers)
    slices = sorted(
        (answers[-1] - answers[0]) / max(1, len(answers) - 1)
        for answers in rounds
        if answers[-1] < float("inf")
    )

    def ms(values: list[float], q: float) -> str:
        value = values[min(len(values) - 1, int(q * len(values)))]
        return "busy" if value == float("inf") else f"{value * 1000:.0f}"

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"database: {'given URL' if args.database_url else 'SQLite file (WAL)'}; "
        f"load beside the loop: {args.load}; GIL switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(f"{args.rounds} rounds of {args.clicks} simultaneous submits by one user (after 1 warm-up round)")
    print(f"  every submit, call -> acknowledged: p50 {ms(each, 0.5)} ms, p95 {ms(each, 0.95)} ms")
    print(
        f"  last in line, call -> acknowledged: p50 {ms(last, 0.5)} ms, p95 {ms(last, 0.95)} ms, max {ms(last, 1)} ms"
    )
    busy_answers = sum(1 for answer in each if answer == float("inf"))
    print(f"  answered 'busy' (over the {ANSWER_BUDGET} s answer budget): {busy_answers} of {len(each)}")
    print(
        f"  per submit under the lock (spacing of acknowledgements): p50 {statistics.median(slices) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--load", choices=["none", "python", "pipeline"], default="pipeline")
    parser.add_argument(
        "--database-url", default="", help="e.g. postgresql+asyncpg://… (default: a temp SQLite file)"
    )
    asyncio.run(main(parser.parse_args()))
