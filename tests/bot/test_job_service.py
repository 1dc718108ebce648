"""The job lifecycle with the real tiny engine and a real SQLite file; the presenter records what users would see."""

from __future__ import annotations

from PIL import Image

from bot.prompt import parse_prompt
from storage.jobs import StoredImage
from storage.models import Job, JobKind
from storage.states import JobState
from tests.bot.support import OutOfMemoryEngine, acknowledge, run_until_done, service
from tests.unit.test_states import HAPPY_PATH


async def test_imagine_runs_through_every_state(parts):
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9 --ar 2:1"))
    assert (job.state, job.width, job.height, job.seed, job.steps) == (JobState.QUEUED, 88, 48, 9, 3)
    (done,) = await run_until_done(jobs, [job.id])
    assert done.state == JobState.SUCCEEDED and done.engine == "local"
    history = [t.to_state for t in await jobs.repo.transitions(job.id)]
    assert history == HAPPY_PATH
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
