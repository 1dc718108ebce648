"""Helpers for job-service tests: a presenter that records what users would see, and a service factory."""

from __future__ import annotations

import asyncio
import random

from bot.jobs import JobDefaults, JobService, Origin
from bot.quotas import QuotaService
from bot.scheduler import Scheduler
from bot.tiers import TierConfig, load_tiers
from engine.base import EngineOutOfMemory, ProgressUpdate
from engine.local import LocalDiffusersEngine
from storage.jobs import JobRepository, StoredImage
from storage.ledger import LedgerRepository
from storage.models import Job
from storage.states import JobState
from storage.users import UserRepository


class RecordingPresenter:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.progress_threads: set[bool] = set()

    async def queued(self, job: Job, position: int | None) -> None:
        self.events.append(("queued", job.id, position))

    def progress(self, job: Job, update: ProgressUpdate) -> None:
        self.events.append(("progress", job.id, (update.step, update.total)))

    async def succeeded(self, job: Job, images: list[StoredImage]) -> None:
        self.events.append(("succeeded", job.id, [image.index for image in images]))

    async def failed(self, job: Job, reason: str) -> None:
        self.events.append(("failed", job.id, reason))

    def of(self, job_id: str, kind: str) -> list[object]:
        return [value for event, jid, value in self.events if event == kind and jid == job_id]


class OutOfMemoryEngine(LocalDiffusersEngine):
    """The GPU boundary: what the real engine raises when the device runs out of memory."""

    async def generate(self, request, on_progress=None, cancel=None):
        raise EngineOutOfMemory("The GPU ran out of memory for this request.")


def service(parts, engine=None, tiers: TierConfig | None = None) -> tuple[JobService, RecordingPresenter]:
    default_engine, database, store = parts
    quotas = QuotaService(UserRepository(database), LedgerRepository(database), tiers or load_tiers())
    jobs = JobService(
        JobRepository(database),
        store,
        engine or default_engine,
        Scheduler(clock=lambda: 0.0),
        JobDefaults(resolution=64, steps=3, model="tiny"),
        quotas,
        rng=random.Random(5),
    )
    presenter = RecordingPresenter()
    jobs.presenter = presenter
    return jobs, presenter


async def run_until_done(jobs: JobService, job_ids: list[str], timeout: float = 30) -> list[Job]:
    """Run the scheduler until every job is terminal in the database *and* its run has returned.

    The row turns terminal before ``run`` tells the presenter (the end is committed first); stopping the
    scheduler in that gap would cancel the presentation, so a test could find no "failed" event."""
    jobs.scheduler.start(1, jobs.run)
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = [await jobs.repo.get(job_id) for job_id in job_ids]
                running = any(job_id in jobs.scheduler.running for job_id in job_ids)
                if all(JobState(row.state).terminal for row in rows) and not running:
                    return rows
                await asyncio.sleep(0.05)
    finally:
        await jobs.scheduler.stop()


ORIGIN = Origin(channel_id=1, guild_id=2, application_id=3, interaction_token="t", message_id=4)


async def acknowledge() -> Origin:
    return ORIGIN
