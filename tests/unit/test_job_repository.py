import asyncio

import pytest
from PIL import Image

from storage.db import Database
from storage.images import ImageNotFound, LocalImageStore
from storage.jobs import JobNotFound, JobRepository, StoredImage
from storage.models import Job
from storage.params import JobParams
from storage.states import InvalidTransition, JobState


@pytest.fixture
async def repo(tmp_path):
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    yield JobRepository(database)
    await database.close()


async def test_transitions_are_persisted_with_history(repo, tmp_path):
    job = await repo.create(Job(user_id=7, prompt="fox", params={"display": "fox"}))
    for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.PROCESSING):
        job = await repo.transition(job.id, state)
    job = await repo.transition(job.id, JobState.QUEUED, retry=True, note="restart")
    assert (job.state, job.attempts) == (JobState.QUEUED, 1)

    # a second connection (a new process) sees the same row and history
    other = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    try:
        again = await JobRepository(other).get(job.id)
        history = await JobRepository(other).transitions(job.id)
    finally:
        await other.close()
    assert again.state == JobState.QUEUED and again.params == JobParams(display="fox")
    assert [(t.from_state, t.to_state, t.attempt) for t in history] == [
        (None, JobState.DRAFT, 0),
        (JobState.DRAFT, JobState.SUBMITTED, 0),
        (JobState.SUBMITTED, JobState.QUEUED, 0),
        (JobState.QUEUED, JobState.PROCESSING, 0),
        (JobState.PROCESSING, JobState.QUEUED, 1),
    ]
    assert history[-1].note == "restart"


async def test_invalid_transition_changes_nothing(repo):
    job = await repo.create(Job(user_id=1, prompt="x"))
    with pytest.raises(InvalidTransition):
        await repo.transition(job.id, JobState.SUCCEEDED)
    assert (await repo.get(job.id)).state == JobState.DRAFT
    assert len(await repo.transitions(job.id)) == 1


async def test_terminal_sets_finished_and_leaves_unfinished(repo):
    done = await repo.create(Job(user_id=1, prompt="a"))
    live = await repo.create(Job(user_id=1, prompt="b"))
    done = await repo.transition(done.id, JobState.CANCELED, error="Canceled.")
    assert done.finished_at is not None and done.error == "Canceled."
    assert [j.id for j in await repo.unfinished()] == [live.id]


async def test_racing_writers_cannot_both_win(repo):
    job = await repo.create(Job(user_id=1, prompt="a"))
    results = await asyncio.gather(
        repo.transition(job.id, JobState.SUBMITTED),
        repo.transition(job.id, JobState.CANCELED),
        return_exceptions=True,
    )
    final = await repo.get(job.id)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(await repo.transitions(job.id)) == 1 + len(winners)
    assert final.state in (JobState.SUBMITTED, JobState.CANCELED)


async def test_unknown_job(repo):
    with pytest.raises(JobNotFound):
        await repo.get("0" * 32)
    assert await repo.find("0" * 32) is None


async def test_images_are_replaced_not_doubled(repo):
    job = await repo.create(Job(user_id=1, prompt="a"))
    first = [StoredImage(i, f"{i:064x}", 8, 8, i) for i in range(4)]
    await repo.replace_images(job.id, first)
    await repo.replace_images(job.id, first)
    assert await repo.images(job.id) == first


async def test_image_store_is_content_addressed(tmp_path):
    store = LocalImageStore(tmp_path / "images")
    image = Image.new("RGB", (8, 8), (200, 10, 10))
    key = await store.put_image(image)
    assert key == await store.put_image(image)
    back = await store.get_image(key)
    assert back.size == (8, 8) and back.getpixel((0, 0)) == (200, 10, 10)
    assert not list((tmp_path / "images").rglob("*.part"))
    with pytest.raises(ImageNotFound):
        await store.get("../../etc/passwd")
    with pytest.raises(ImageNotFound):
        await store.get("f" * 64)


async def test_concurrent_first_sight_of_a_user(repo):
    from storage.users import UserRepository

    users = await asyncio.gather(*(UserRepository(repo.database).get(42, "bob") for _ in range(5)))
    assert {user.id for user in users} == {42}
