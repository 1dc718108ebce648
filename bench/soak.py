"""Soak: many /imagine jobs through the real bot process and the Discord emulator, with seeded faults.

How it runs: the emulator runs in this process; the bot runs as its own process (``python -m bot``'s
``run()``, configured through environment variables like any deployment), with a fast stand-in engine
(``SoakEngine``: a few progress steps, solid-colour tiles, no torch), so the run measures the front
door, the job lifecycle, the ledger and the Discord layer, not denoising. Its database is SQLite in a
temporary folder; this script reads it (read-only) to pace itself and to count at the end. Commands go
out from ``--users`` members, at most ``--unanswered`` awaiting their answer and ``--in-flight`` jobs
waiting or running at once. Faults are drawn up front from ``--seed`` and injected after given job
numbers, so a run with the same seed meets the same faults at the same points (their interleaving with
the bot's own work still varies with timing):

- ``kill``: the bot process is SIGKILLed with jobs in flight, and started again;
- ``engine``: the engine fails the jobs whose prompt hashes (with the seed) under ``--engine-failures``;
- ``5xx`` / ``429``: the emulator answers the next 1–2 message edits with 500/502/503 or a 429;
- ``reconnect`` / ``invalid-session``: gateway op 7 (the bot RESUMEs) / op 9 (it IDENTIFYs again).

It prints, with its seed: lost jobs (commands acknowledged whose job never reached an end, or whose
message never showed one), duplicated (more than one job or more than one result message per command),
double-charged (a ledger kind twice for one job, or a charge for a job that did not succeed), the ledger
balance (every reservation released), and p50/p95 first feedback (command sent → interaction answered).
Commands sent while the bot was dead or starting get no answer (Discord tells the user "the application
did not respond"); they are counted apart and make no job.

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
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402

from engine.base import CancelToken, EngineCancelled, EngineError, GenerationRequest, ProgressUpdate  # noqa: E402

FAULTS = ("kill", "5xx", "429", "reconnect", "invalid-session")
TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")
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

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def fails(self, prompt: str) -> bool:
        digest = hashlib.sha256(f"{self.seed}:{prompt}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < self.failure_rate

    async def generate(
        self, request: GenerationRequest, on_progress=None, cancel: CancelToken | None = None
    ) -> list[Image.Image]:
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


def serve_bot(seed: int, failure_rate: float) -> int:
    """The bot process (``--serve-bot``): ``python -m bot`` with the stand-in engine."""
    from bot.__main__ import run
    from bot.discord_endpoints import apply_discord_endpoints
    from bot.logs import configure_logging
    from bot.settings import load_settings

    settings = load_settings()
    configure_logging("WARNING", "text", [])
    apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
    return asyncio.run(run(settings, engine_factory=lambda _: SoakEngine(seed, failure_rate)))


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
    kills: int = 0


@dataclass
class JobRow:
    id: str
    prompt: str
    state: str
    message_id: int | None


@dataclass
class LedgerRow:
    job_id: str
    kind: str
    seconds: float


class BotProcess:
    """The bot as a child process; ``kill()`` is a SIGKILL, ``start()`` waits until it is connected."""

    def __init__(self, env: dict[str, str], log_path: Path, args: argparse.Namespace) -> None:
        self.env, self.log_path, self.args = env, log_path, args
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, emu) -> None:
        identified = emu.gateway.identifies
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--serve-bot",
                "--seed",
                str(self.args.seed),
                "--engine-failures",
                str(self.args.engine_failures),
                env=self.env,
                stdout=log,
                stderr=log,
            )
        await emu.wait_for(
            lambda: emu.gateway.identifies > identified, timeout=120, what="the bot to connect"
        )
        await emu.wait_until_ready(timeout=60)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 60)


class Database:
    """The bot's SQLite file, read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str) -> list[tuple]:
        if not self.path.exists():
            return []
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql).fetchall()

    def unfinished(self) -> int:
        marks = ", ".join(f"'{state}'" for state in TERMINAL)
        return self._query(f"SELECT count(*) FROM jobs WHERE state NOT IN ({marks})")[0][0]

    def jobs(self) -> list[JobRow]:
        return [JobRow(*row) for row in self._query("SELECT id, prompt, state, message_id FROM jobs")]

    def ledger(self) -> list[LedgerRow]:
        return [LedgerRow(*row) for row in self._query("SELECT job_id, kind, seconds FROM quota_ledger")]

    def engine_runs(self) -> int:
        return self._query("SELECT count(*) FROM job_transitions WHERE to_state = 'PROCESSING'")[0][0]


def plan_faults(rng: random.Random, jobs: int, count: int) -> list[tuple[int, str]]:
    points = sorted(rng.sample(range(1, max(2, jobs)), min(count, max(1, jobs - 1))))
    return [(point, rng.choice(FAULTS)) for point in points]


async def inject(emu, bot: BotProcess, fault: str, rng: random.Random, run: Run) -> None:
    if fault == "kill":
        await bot.kill()
        await bot.start(emu)
        run.kills += 1
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
    from sandbox.discord_emulator import DiscordEmulator
    from tests.e2e.harness import bot_environment, is_final_grid

    rng = random.Random(args.seed)
    emu = DiscordEmulator()
    await emu.start()
    users = [emu.default_user] + [emu.add_user(f"soak{i}") for i in range(1, args.users)]
    run = Run(faults=plan_faults(rng, args.jobs, args.faults))
    folder = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
    root = Path(folder.name)
    (root / "tiers.toml").write_text(TIERS)
    env = os.environ | bot_environment(
        emu,
        root,
        root / "data",
        tiers_file=root / "tiers.toml",
        model_steps=4,
        progress_edits_per_second=40,
        permutation_confirm_over=10,
    )
    database = Database(root / "data" / "imaginebot.db")
    bot = BotProcess(env, root / "bot.log", args)
    await bot.start(emu)
    faults = collections.deque(run.faults)
    started = time.perf_counter()
    pending: set[asyncio.Task] = set()

    async def answered(command: Command) -> None:
        try:
            command.kind = await command.interaction.wait_for_response(30)
        except TimeoutError:
            return  # the bot was dead or starting: Discord says "the application did not respond"
        command.answered = time.perf_counter()

    try:
        for index in range(args.jobs):
            while faults and faults[0][0] == index:
                await inject(emu, bot, faults.popleft()[1], rng, run)
            await _room(database, args.in_flight)
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
                lambda: database.unfinished() == 0, timeout=args.settle, what="all jobs to end"
            )
        except TimeoutError:
            print(f"soak: jobs still unfinished {args.settle:.0f} s after the last command (counted as lost)")
    finally:
        elapsed = time.perf_counter() - started
        exit_code = await bot.stop()
        jobs, ledger, engine_runs = database.jobs(), database.ledger(), database.engine_runs()
        messages = emu.messages()
        await emu.stop()
        log_tail = (root / "bot.log").read_text(errors="replace")[-3000:]
        folder.cleanup()

    _report(args, run, jobs, ledger, messages, elapsed, is_final_grid, engine_runs)
    if exit_code != 0:
        print(f"  the bot exited with {exit_code} at the end; its log ends:\n{log_tail}")
    return 0


async def _room(database: Database, in_flight: int) -> None:
    """Until fewer than ``in_flight`` jobs wait or run in the bot (another process: it is polled)."""
    while True:
        if database.unfinished() < in_flight:
            return
        await asyncio.sleep(0.02)


def _report(args, run, jobs, ledger, messages, elapsed, is_final_grid, engine_runs) -> None:
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
        if not rows or not all(job.state in TERMINAL for job in rows):
            lost += 1
            continue
        message = by_message.get(rows[0].message_id) if rows[0].message_id else None
        ended = message is not None and (
            is_final_grid(message) or "❌" in message.content or "Canceled" in message.content
        )
        lost += 0 if ended else 1
    grid_ids: collections.Counter[str] = collections.Counter()
    for message in messages:
        if not message.deleted and is_final_grid(message):
            grid_ids[message.custom_ids()[0].split(":")[2]] += 1
    duplicated_messages = sum(n - 1 for n in grid_ids.values() if n > 1)
    kinds = collections.defaultdict(list)
    for entry in ledger:
        kinds[entry.job_id].append(entry.kind)
    state_of = {job.id: job.state for job in jobs}
    double_charged = sum(
        1
        for job_id, k in kinds.items()
        if len(k) != len(set(k)) or ("charge" in k and state_of.get(job_id) != "SUCCEEDED")
    )
    balance = collections.defaultdict(float)
    for entry in ledger:
        if entry.kind in ("reserve", "release"):
            balance[entry.job_id] += entry.seconds
    unbalanced = sum(1 for total in balance.values() if abs(total) > 1e-6)
    states = collections.Counter(job.state for job in jobs)
    from_unanswered = sum(
        1 for c in unanswered if any(job.prompt == c.prompt.split(" --")[0] for job in jobs)
    )
    firsts = sorted(c.answered - c.sent for c in run.commands if c.answered is not None)

    def pct(p: float) -> float:
        return firsts[min(len(firsts) - 1, round(p * (len(firsts) - 1)))] if firsts else float("nan")

    print(f"soak: seed {args.seed}, {args.jobs} commands from {args.users} users, {elapsed:.1f} s")
    print(f"  machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    fault_counts = collections.Counter(name for _, name in run.faults)
    print(
        f"  faults: {dict(fault_counts)} (SIGKILLs done: {run.kills}); engine failure rate {args.engine_failures}"
    )
    print(
        f"  answers: {len(deferred)} deferred (jobs), {len(refused)} refused privately, "
        f"{len(unanswered)} unanswered (sent while the bot was dead or starting; {from_unanswered} of them "
        "had been saved before the kill and ran in a channel message)"
    )
    print(f"  job states: {dict(states)}; engine runs {engine_runs} (a killed run counts again)")
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
    parser.add_argument("--serve-bot", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_bot:
        sys.exit(serve_bot(arguments.seed, arguments.engine_failures))
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(main(arguments)))
