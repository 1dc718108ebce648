"""Soak: many /imagine jobs through the real bot and the Discord emulator, with seeded random faults.

How it runs: the emulator and the bot share one event loop in this process (as in the e2e tests). The
engine is a fast stand-in (``SoakEngine``: a few progress steps, solid-colour tiles, no torch) so the run
measures the front door, the job lifecycle, the ledger and the Discord layer, not denoising. Commands go
out from ``--users`` members, at most ``--unanswered`` awaiting their answer and ``--in-flight`` jobs
waiting or running at once. Faults are drawn up front from
``--seed`` and injected after given job numbers, so a run with the same seed meets the same faults at
the same points (their interleaving with the bot's own work still varies with timing):

- ``restart``: the bot is stopped and started again, with jobs in flight (a graceful in-process stop:
  this script does not SIGKILL; ``tests/e2e/test_bot_process.py`` covers a killed process);
- ``engine``: the engine fails the jobs whose prompt hashes (with the seed) under ``--engine-failures``;
- ``5xx`` / ``429``: the emulator answers the next 1–2 message edits with 500/502/503 or a 429;
- ``reconnect`` / ``invalid-session``: gateway op 7 (the bot RESUMEs) / op 9 (it IDENTIFYs again).

It prints, with its seed: lost jobs (commands acknowledged whose job never reached an end, or whose
message never showed one), duplicated (more than one job or more than one result message per command),
double-charged (a ledger kind twice for one job, or a charge for a job that did not succeed), the ledger
balance (every reservation released), and p50/p95 first feedback (command sent → interaction answered).

    .venv/bin/python bench/soak.py --jobs 2000 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402

from engine.base import CancelToken, EngineCancelled, EngineError, GenerationRequest, ProgressUpdate  # noqa: E402

FAULTS = ("restart", "5xx", "429", "reconnect", "invalid-session")
TIERS = """
default = "soak"
[quota]
period = "month"
[tiers.soak]
priority = 0
fast_seconds = 1e9
daily_jobs = 1000000
max_concurrent = 4
max_queued = 50
relax = true
max_resolution = 1024
max_steps = 40
"""


class SoakEngine:
    """Fast, deterministic stand-in: ``steps`` progress reports, solid tiles, seeded failures."""

    name = "soak"
    slots = 4

    def __init__(self, seed: int, failure_rate: float) -> None:
        self.seed, self.failure_rate = seed, failure_rate
        self.calls = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def fails(self, prompt: str) -> bool:
        digest = hashlib.sha256(f"{self.seed}:{prompt}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < self.failure_rate

    async def generate(
        self, request: GenerationRequest, on_progress=None, cancel: CancelToken | None = None
    ) -> list[Image.Image]:
        self.calls += 1
        for step in range(1, request.steps + 1):
            await asyncio.sleep(0.002)
            if cancel is not None and cancel.cancelled:
                raise EngineCancelled("canceled")
            if on_progress is not None:
                on_progress(ProgressUpdate(step, request.steps))
        if self.fails(request.prompt):
            raise EngineError("The engine failed (injected by the soak).")
        colour = (request.seed % 256, 80, 160)
        return [Image.new("RGB", (request.width, request.height), colour) for _ in range(request.n)]


@dataclass
class Command:
    index: int
    prompt: str
    sent: float
    interaction: object
    answered: float | None = None
    kind: int | None = None  # 5: deferred (a job), 4: a private answer (refused)


@dataclass
class Run:
    commands: list[Command] = field(default_factory=list)
    faults: list[tuple[int, str]] = field(default_factory=list)
    restarts: int = 0


def plan_faults(rng: random.Random, jobs: int, count: int) -> list[tuple[int, str]]:
    points = sorted(rng.sample(range(1, max(2, jobs)), min(count, max(1, jobs - 1))))
    return [(point, rng.choice(FAULTS)) for point in points]


async def inject(emu, runner, fault: str, rng: random.Random, run: Run) -> None:
    if fault == "restart":
        await runner.stop()
        await runner.start(emu)
        run.restarts += 1
    elif fault == "5xx":
        emu.force_status(
            rng.choice((500, 502, 503)), method="PATCH", path_contains="/messages/", count=rng.randint(1, 2)
        )
    elif fault == "429":
        emu.force_429(method="PATCH", path_contains="/messages/", count=rng.randint(1, 2), retry_after=0.2)
    elif fault == "reconnect":
        await emu.send_reconnect()
    elif fault == "invalid-session":
        await emu.send_invalid_session()


async def main(args: argparse.Namespace) -> int:
    from sqlmodel import select

    from bot.app import ImagineBot
    from bot.discord_endpoints import apply_discord_endpoints
    from sandbox.discord_emulator import DiscordEmulator
    from storage.models import Job, LedgerEntry
    from storage.states import JobState
    from tests.e2e.harness import bot_settings, is_final_grid, wait_for_bot

    rng = random.Random(args.seed)
    emu = DiscordEmulator()
    await emu.start()
    users = [emu.default_user] + [emu.add_user(f"soak{i}") for i in range(1, args.users)]
    run = Run(faults=plan_faults(rng, args.jobs, args.faults))
    folder = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
    tiers = Path(folder.name) / "tiers.toml"
    tiers.write_text(TIERS)
    settings = bot_settings(
        emu,
        Path(folder.name),
        Path(folder.name) / "data",
        tiers_file=str(tiers),
        model_steps=4,
        progress_edits_per_second=40,
        permutation_confirm_over=10,
    )
    engine = SoakEngine(args.seed, args.engine_failures)

    class Runner:
        bot: ImagineBot | None = None
        task: asyncio.Task | None = None

        async def start(self, emu) -> None:
            apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
            self.bot = ImagineBot(settings, engine, guild_ready_timeout=0.05, watchdog_interval=0.5)
            self.task = asyncio.create_task(self.bot.start(settings.discord_token.get_secret_value()))
            await wait_for_bot(emu, self.task)

        async def stop(self) -> None:
            assert self.bot is not None and self.task is not None
            await self.bot.close()
            await asyncio.gather(self.task, return_exceptions=True)

    runner = Runner()
    await runner.start(emu)
    faults = collections.deque(run.faults)
    started = time.perf_counter()
    pending: set[asyncio.Task] = set()

    async def answered(command: Command) -> None:
        command.kind = await command.interaction.wait_for_response(30)
        command.answered = time.perf_counter()

    try:
        for index in range(args.jobs):
            while faults and faults[0][0] == index:
                await inject(emu, runner, faults.popleft()[1], rng, run)
            await _room(runner, args.in_flight)
            while len(pending) >= args.unanswered:  # Discord allows 3 s per answer: do not outrun the bot
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            prompt = f"soak job {index} --seed {index}"
            sent = time.perf_counter()
            interaction = await emu.invoke_slash(
                "imagine", {"prompt": prompt}, user=users[index % len(users)]
            )
            command = Command(index, prompt, sent, interaction)
            run.commands.append(command)
            task = asyncio.create_task(answered(command))
            pending.add(task)
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await emu.wait_for(
                lambda: _all_ended(runner.bot, Job, JobState), timeout=args.settle, what="all jobs to end"
            )
        except TimeoutError:
            print(f"soak: jobs still unfinished {args.settle:.0f} s after the last command (counted as lost)")
    finally:
        elapsed = time.perf_counter() - started
        bot = runner.bot
        assert bot is not None
        async with bot.database.sessions() as session:
            jobs = list((await session.exec(select(Job))).all())
            ledger = list((await session.exec(select(LedgerEntry))).all())
        messages = emu.messages()
        await runner.stop()
        await emu.stop()
        folder.cleanup()

    _report(args, run, jobs, ledger, messages, elapsed, is_final_grid, JobState, engine)
    return 0


async def _room(runner, in_flight: int) -> None:
    """Until fewer than ``in_flight`` jobs wait or run in the bot (a benchmark may poll)."""
    while True:
        scheduler = runner.bot.scheduler
        if len(scheduler.running) + scheduler.waiting < in_flight:
            return
        await asyncio.sleep(0.01)


async def _all_ended(bot, Job, JobState) -> bool:  # noqa: N803
    return not await bot.jobs.repo.unfinished()


def _report(args, run, jobs, ledger, messages, elapsed, is_final_grid, JobState, engine) -> None:  # noqa: N803
    deferred = [c for c in run.commands if c.kind == 5]
    refused = [c for c in run.commands if c.kind == 4]
    unanswered = [c for c in run.commands if c.kind is None]
    by_prompt = collections.Counter(job.prompt for job in jobs)
    duplicated_jobs = sum(n - 1 for n in by_prompt.values() if n > 1)
    by_message = {m.id: m for m in messages}
    lost = 0
    for command in deferred:
        text = command.prompt.split(" --")[0]
        rows = [job for job in jobs if job.prompt == text]
        if not rows or not all(JobState(job.state).terminal for job in rows):
            lost += 1
            continue
        message = by_message.get(rows[0].message_id) if rows[0].message_id else None
        ended = message is not None and (
            is_final_grid(message) or "❌" in message.content or "Canceled" in message.content
        )
        lost += 0 if ended else 1
    grid_ids = collections.Counter()
    for message in messages:
        if not message.deleted and is_final_grid(message):
            grid_ids[message.custom_ids()[0].split(":")[2]] += 1
    duplicated_messages = sum(n - 1 for n in grid_ids.values() if n > 1)
    kinds = collections.defaultdict(list)
    for entry in ledger:
        kinds[entry.job_id].append(str(entry.kind))
    state_of = {job.id: JobState(job.state) for job in jobs}
    double_charged = sum(
        1
        for job_id, k in kinds.items()
        if len(k) != len(set(k)) or ("charge" in k and state_of.get(job_id) != JobState.SUCCEEDED)
    )
    unbalanced = sum(
        1
        for job_id, k in kinds.items()
        if abs(sum(e.seconds for e in ledger if e.job_id == job_id and str(e.kind) in ("reserve", "release")))
        > 1e-6
    )
    states = collections.Counter(str(job.state) for job in jobs)
    firsts = sorted(c.answered - c.sent for c in run.commands if c.answered is not None)

    def pct(p: float) -> float:
        return firsts[min(len(firsts) - 1, round(p * (len(firsts) - 1)))] if firsts else float("nan")

    print(f"soak: seed {args.seed}, {args.jobs} commands from {args.users} users, {elapsed:.1f} s")
    print(f"  machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    fault_counts = collections.Counter(name for _, name in run.faults)
    print(
        f"  faults: {dict(fault_counts)} (restarts done: {run.restarts}); engine failure rate {args.engine_failures}"
    )
    print(
        f"  answers: {len(deferred)} deferred (jobs), {len(refused)} refused privately, "
        f"{len(unanswered)} unanswered (they arrived while the bot was stopping or reconnecting: no job was made)"
    )
    print(f"  job states: {dict(states)}; engine calls {engine.calls}")
    print(
        f"  lost: {lost}   duplicated: {duplicated_jobs + duplicated_messages}   double-charged: {double_charged}"
    )
    print(
        f"  ledger balance: {'ok' if unbalanced == 0 else f'{unbalanced} jobs with reservations not released'}"
    )
    print(
        f"  first feedback (command → interaction answered): p50 {pct(0.5) * 1000:.0f} ms, p95 {pct(0.95) * 1000:.0f} ms"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=40, help="commands waiting or running at once")
    parser.add_argument("--unanswered", type=int, default=4, help="commands awaiting their answer at once")
    parser.add_argument("--faults", type=int, default=40, help="faults injected over the run")
    parser.add_argument("--engine-failures", type=float, default=0.02, help="share of jobs the engine fails")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--settle", type=float, default=300.0, help="seconds to wait for the last jobs")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(main(parse_args())))
