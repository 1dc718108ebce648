"""PROCESSING_TIMEOUT counts from the last progress the engine reported: a slow job that keeps moving
runs to the end, a stuck one is ended TIMED_OUT (and stopped) — on an injected clock, no sleeps."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from bot.jobs import JobDefaults, JobService, Timeouts
from bot.prompt import parse_prompt
from bot.quotas import QuotaService
from bot.scheduler import Scheduler
from bot.tiers import load_tiers
from engine.base import EngineCancelled, ProgressUpdate
from storage.db import Database
from storage.images import LocalImageStore
from storage.jobs import JobRepository
from storage.ledger import LedgerRepository
from storage.states import JobState
from storage.users import UserRepository
from tests.bot.support import RecordingPresenter, acknowledge

START = datetime(2026, 1, 1, tzinfo=UTC)


class SteppedEngine:
    """Reports one step each time the test releases one; stops when canceled."""

    name = "stepped"
    slots = 1

    def __init__(self) -> None:
        self.release: asyncio.Queue[None] = asyncio.Queue()
        self.reported = asyncio.Queue[int]()
        self.started = asyncio.Event()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request, on_progress=None, cancel=None):
        self.started.set()  # the job row is PROCESSING by now
        for step in range(1, request.steps + 1):
            await self.release.get()
            if cancel is not None and cancel.cancelled:
                raise EngineCancelled("canceled")
            if on_progress is not None:
                on_progress(ProgressUpdate(step, request.steps))
            await self.reported.put(step)
        return [Image.new("RGB", (request.width, request.height)) for _ in range(request.n)]


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


async def make_service(parts, engine: SteppedEngine, clock: Clock) -> JobService:
    _, database, store = parts
    quotas = QuotaService(UserRepository(database), LedgerRepository(database), load_tiers(), now=clock)
    jobs = JobService(
        JobRepository(database, now=clock),
        store,
        engine,
        Scheduler(clock=lambda: 0.0),
        JobDefaults(resolution=64, steps=4, model="tiny"),
        quotas,
        timeouts=Timeouts(processing=60),
        rng=random.Random(1),
    )
    jobs.presenter = RecordingPresenter()
    return jobs


@pytest.fixture
async def parts(tmp_path):
    """A database and an image store (the engine is the test's own)."""
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    yield None, database, LocalImageStore(tmp_path / "images")
    await database.close()


async def started(engine: SteppedEngine) -> None:
    async with asyncio.timeout(10):
        await engine.started.wait()


async def test_a_slow_job_that_keeps_moving_is_not_ended(parts):
    engine, clock = SteppedEngine(), Clock()
    jobs = await make_service(parts, engine, clock)
    job = await jobs.submit_imagine(1, acknowledge, parse_prompt("slow fox --steps 4"))
    jobs.scheduler.start(1, jobs.run)
    try:
        await started(engine)
        for step in range(1, 4):  # 50 s per step: 150 s in all, far beyond the 60 s limit
            clock.at += timedelta(seconds=50)
            engine.release.put_nowait(None)
            assert await engine.reported.get() == step
            assert await jobs.enforce_timeouts(clock() + timedelta(seconds=55)) == []
        engine.release.put_nowait(None)
        await jobs.scheduler.stop(grace=10)  # returns once the job has finished
        assert (await jobs.repo.get(job.id)).state == JobState.SUCCEEDED
    finally:
        await jobs.scheduler.stop()


async def test_a_stuck_job_is_still_ended(parts):
    engine, clock = SteppedEngine(), Clock()
    jobs = await make_service(parts, engine, clock)
    job = await jobs.submit_imagine(1, acknowledge, parse_prompt("stuck fox --steps 4"))
    jobs.scheduler.start(1, jobs.run)
    try:
        await started(engine)
        clock.at += timedelta(seconds=30)
        engine.release.put_nowait(None)
        assert await engine.reported.get() == 1
        assert await jobs.enforce_timeouts(clock() + timedelta(seconds=59)) == []
        assert await jobs.enforce_timeouts(clock() + timedelta(seconds=61)) == [job.id]
        ended = await jobs.repo.get(job.id)
        assert ended.state == JobState.TIMED_OUT and "no progress" in (ended.error or "")
        engine.release.put_nowait(None)  # the engine stops at its next step: no result is posted
        await jobs.scheduler.stop(grace=10)
        assert (await jobs.repo.get(job.id)).state == JobState.TIMED_OUT
        assert jobs.presenter.of(job.id, "succeeded") == []
    finally:
        await jobs.scheduler.stop()


async def test_a_job_that_never_reports_is_ended_from_the_start_of_processing(parts):
    engine, clock = SteppedEngine(), Clock()
    jobs = await make_service(parts, engine, clock)
    job = await jobs.submit_imagine(1, acknowledge, parse_prompt("silent fox --steps 4"))
    jobs.scheduler.start(1, jobs.run)
    try:
        await started(engine)
        assert await jobs.enforce_timeouts(clock() + timedelta(seconds=61)) == [job.id]
        assert "spent more than" in ((await jobs.repo.get(job.id)).error or "")
        engine.release.put_nowait(None)
    finally:
        await jobs.scheduler.stop()
