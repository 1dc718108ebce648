"""The job lifecycle with the real tiny engine and a real SQLite file; the presenter records what users would see."""

from __future__ import annotations

import asyncio
import random

import pytest
from PIL import Image

from bot.jobs import JobDefaults, JobService, Origin
from bot.prompt import parse_prompt
from bot.quotas import QuotaService
from bot.scheduler import Scheduler
from bot.tiers import TierConfig, load_tiers
from engine.base import EngineOutOfMemory, ProgressUpdate
from engine.local import LocalDiffusersEngine
from storage.db import Database
from storage.images import LocalImageStore
from storage.jobs import JobRepository, StoredImage
from storage.ledger import LedgerRepository
from storage.models import Job, JobKind
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


@pytest.fixture
async def parts(tmp_path, tiny_model_dir):
    engine = LocalDiffusersEngine(str(tiny_model_dir), "cpu")
    await engine.start()
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    yield engine, database, LocalImageStore(tmp_path / "images")
    await database.close()
    await engine.close()


def service(parts, engine=None, tiers: TierConfig | None = None) -> tuple[JobService, RecordingPresenter]:
    default_engine, database, store = parts
    quotas = QuotaService(UserRepository(database), LedgerRepository(database), tiers or load_tiers())
    jobs = JobService(
        JobRepository(database),
        store,
        engine or default_engine,
        Scheduler(),
        JobDefaults(resolution=64, steps=3, model="tiny"),
        quotas,
        rng=random.Random(5),
    )
    presenter = RecordingPresenter()
    jobs.presenter = presenter
    return jobs, presenter


async def run_until_done(jobs: JobService, job_ids: list[str], timeout: float = 30) -> list[Job]:
    jobs.scheduler.start(1, jobs.run)
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = [await jobs.repo.get(job_id) for job_id in job_ids]
                if all(JobState(row.state).terminal for row in rows):
                    return rows
                await asyncio.sleep(0.05)
    finally:
        await jobs.scheduler.stop()


ORIGIN = Origin(channel_id=1, guild_id=2, application_id=3, interaction_token="t", message_id=4)


async def acknowledge() -> Origin:
    return ORIGIN


async def test_imagine_runs_through_every_state(parts):
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9 --ar 2:1"))
    assert (job.state, job.width, job.height, job.seed, job.steps) == (JobState.QUEUED, 88, 48, 9, 3)
    (done,) = await run_until_done(jobs, [job.id])
    assert done.state == JobState.SUCCEEDED and done.engine == "local"
    history = [t.to_state for t in await jobs.repo.transitions(job.id)]
    assert history == [
        JobState.DRAFT,
        JobState.SUBMITTED,
        JobState.QUEUED,
        JobState.PROCESSING,
        JobState.GENERATED,
        JobState.STORING,
        JobState.SUCCEEDED,
    ]
    assert presenter.of(job.id, "queued") == [1]
    assert presenter.of(job.id, "progress") == [(1, 3), (2, 3), (3, 3)]
    assert presenter.of(job.id, "succeeded") == [[0, 1, 2, 3]]
    images = await jobs.repo.images(job.id)
    assert [image.seed for image in images] == [9, 10, 11, 12]
    assert all((image.width, image.height) == (88, 48) for image in images)


async def test_children_upscale_variation_reroll(parts):
    jobs, presenter = service(parts)
    parent = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9"))
    (parent,) = await run_until_done(jobs, [parent.id])
    upscale = await jobs.submit_child(parent, JobKind.UPSCALE, 2, 10, acknowledge)
    variation = await jobs.submit_child(parent, JobKind.VARIATION, 0, 10, acknowledge)
    reroll = await jobs.submit_child(parent, JobKind.REROLL, None, 10, acknowledge)
    await run_until_done(jobs, [upscale.id, variation.id, reroll.id])

    parent_images = await jobs.repo.images(parent.id)
    (upscaled,) = await jobs.repo.images(upscale.id)
    assert upscaled.key == parent_images[2].key  # the same pixels, stored once
    assert presenter.of(upscale.id, "progress") == []  # no engine work
    assert presenter.of(variation.id, "progress")[-1] == (1, 1)  # img2img at strength 0.6 of 3 steps
    assert reroll.seed != parent.seed and len(await jobs.repo.images(reroll.id)) == 4


async def test_out_of_memory_fails_the_job_and_tells_the_user(parts):
    default_engine, _, _ = parts
    oom = OutOfMemoryEngine(default_engine.model, "cpu")
    jobs, presenter = service(parts, engine=oom)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    (done,) = await run_until_done(jobs, [job.id])
    assert done.state == JobState.FAILED and "out of memory" in done.error
    assert presenter.of(job.id, "failed") == [done.error]


async def test_cancel_a_queued_job(parts):
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    canceled = await jobs.cancel(job.id)
    assert canceled.state == JobState.CANCELED
    assert jobs.scheduler.waiting == 0
    assert presenter.of(job.id, "failed") == ["Canceled."]


async def test_recovery_after_a_crash_at_each_point(parts):
    """Rows as a killed process leaves them: every one ends SUCCEEDED, published once."""
    jobs, presenter = service(parts)
    repo = jobs.repo

    async def left_in(state_path: list[JobState], **fields) -> Job:
        job = await repo.create(
            Job(user_id=10, prompt="crash", width=64, height=64, steps=2, seed=3, **fields)
        )
        for state in state_path:
            job = await repo.transition(job.id, state)
        return job

    path = [JobState.SUBMITTED, JobState.QUEUED, JobState.PROCESSING, JobState.GENERATED, JobState.STORING]
    draft = await left_in([])
    queued = await left_in(path[:2])
    processing = await left_in(path[:3])
    storing_empty = await left_in(path)
    storing_done = await left_in(path)
    key = await jobs.store.put_image(Image.new("RGB", (64, 64)))
    await repo.replace_images(storing_done.id, [StoredImage(i, key, 64, 64, 3 + i) for i in range(4)])

    ids = [draft.id, queued.id, processing.id, storing_empty.id, storing_done.id]
    assert await jobs.recover() == 5
    rows = await run_until_done(jobs, ids)
    assert [row.state for row in rows] == [JobState.SUCCEEDED] * 5
    assert [row.attempts for row in rows] == [0, 0, 1, 1, 0]
    assert all(len(presenter.of(job_id, "succeeded")) == 1 for job_id in ids)
    assert presenter.of(storing_done.id, "progress") == []  # published, not generated again
    assert await repo.unfinished() == []
