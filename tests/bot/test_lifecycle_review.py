"""Job-lifecycle defects found in review (issue 15): each test reproduces one with the real tiny engine and SQLite."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy.exc import OperationalError

from bot.jobs import CRASHED_REASON, IMAGE_NOT_LOADED, STORE_FAILED_REASON
from bot.prompt import parse_prompt
from bot.quotas import AdmissionRefused
from engine.base import EngineCancelled, ProgressUpdate
from engine.local import LocalDiffusersEngine
from storage.audit import AuditRepository
from storage.models import Job, LedgerKind
from storage.states import JobState
from tests.bot.support import RecordingPresenter, acknowledge, run_until_done, service


async def _crashed_while_running(jobs, runs: int) -> Job:
    """A fast job with a reservation, left in PROCESSING by a process that died during its ``runs``-th run."""
    job = Job(
        user_id=10, prompt="crash", width=64, height=64, steps=2, seed=3, mode="fast", estimate_seconds=2.0
    )
    job = await jobs.repo.create(job, ledger=jobs.quotas.reservation(job))
    for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.PROCESSING):
        job = await jobs.repo.transition(job.id, state)
    for _ in range(runs - 1):  # each earlier restart: a retry, then it ran again
        job = await jobs.repo.transition(job.id, JobState.QUEUED, retry=True)
        job = await jobs.repo.transition(job.id, JobState.PROCESSING)
    return job


async def test_a_job_that_keeps_killing_the_process_is_given_up_after_max_attempts(parts):
    """Item 4: past MAX_ATTEMPTS runs the job ends FAILED at start-up, released, told and audited."""
    jobs, presenter = service(parts)
    assert jobs.max_attempts == 3
    job = await _crashed_while_running(jobs, runs=3)
    assert job.attempts == 2

    await jobs.recover()
    row = await jobs.repo.get(job.id)
    assert row.state == JobState.FAILED and row.attempts == 2
    assert "interrupted 3 times" in row.error and "Nothing was charged" in row.error
    assert presenter.of(job.id, "failed") == [row.error]
    assert jobs.scheduler.waiting == 0
    entries = await jobs.quotas.ledger.entries(job_id=job.id)
    assert [e.kind for e in entries] == [LedgerKind.RESERVE, LedgerKind.RELEASE]
    assert sum(e.seconds for e in entries) == 0
    (audit,) = await AuditRepository(jobs.repo.database).recent()
    assert (audit.action, audit.target, audit.details["runs"]) == ("job given up", job.id, 3)


async def test_a_job_under_the_attempt_cap_is_run_again(parts):
    jobs, presenter = service(parts)
    job = await _crashed_while_running(jobs, runs=2)
    await jobs.recover()
    (done,) = await run_until_done(jobs, [job.id], timeout=180)
    assert done.state == JobState.SUCCEEDED and done.attempts == 2


async def test_a_cancel_landing_as_the_job_starts_is_not_lost(parts):
    """Item 3: /cancel right after the PROCESSING commit finds the job's token and cancels it."""
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    transition = jobs.repo.transition

    async def transition_then_cancel(job_id, target, **kwargs):
        row = await transition(job_id, target, **kwargs)
        if target == JobState.PROCESSING:
            await jobs.cancel(job_id)  # the user's /cancel, in the gap before the engine starts
        return row

    jobs.repo.transition = transition_then_cancel
    (done,) = await run_until_done(jobs, [job.id], timeout=180)
    assert done.state == JobState.CANCELED
    assert presenter.of(job.id, "succeeded") == [] and presenter.of(job.id, "failed") == ["Canceled."]
    kinds = [e.kind for e in await jobs.quotas.ledger.entries(job_id=job.id)]
    assert kinds == [LedgerKind.RESERVE, LedgerKind.RELEASE]  # not charged


async def test_a_database_error_on_the_processing_transition_fails_the_job_at_once(parts):
    """Item 7: an error outside the engine call ends the job FAILED, not QUEUED outside the queue."""
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    transition = jobs.repo.transition

    async def failing_transition(job_id, target, **kwargs):
        if target == JobState.PROCESSING:
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        return await transition(job_id, target, **kwargs)

    jobs.repo.transition = failing_transition
    (done,) = await run_until_done(jobs, [job.id], timeout=180)
    assert done.state == JobState.FAILED and done.error == CRASHED_REASON
    assert presenter.of(job.id, "failed") == [CRASHED_REASON]
    assert sum(e.seconds for e in await jobs.quotas.ledger.entries(job_id=job.id)) == 0


async def test_a_storage_error_fails_the_job_at_once(parts):
    """Item 7: a failure storing the images does not leave the job STORING with its reservation."""
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))

    async def disk_full(data):
        raise OSError(28, "No space left on device")

    jobs.store.put = disk_full  # the store refuses every attempt: it ends FAILED saying what went wrong
    (done,) = await run_until_done(jobs, [job.id], timeout=180)
    assert done.state == JobState.FAILED and done.error == STORE_FAILED_REASON
    assert presenter.of(job.id, "succeeded") == [] and presenter.of(job.id, "failed") == [STORE_FAILED_REASON]
    assert sum(e.seconds for e in await jobs.quotas.ledger.entries(job_id=job.id)) == 0


def _later(job: Job, seconds: float) -> datetime:
    since = job.state_since if job.state_since.tzinfo else job.state_since.replace(tzinfo=UTC)
    return since + timedelta(seconds=seconds)


async def test_a_job_timed_out_while_storing_posts_nothing(parts):
    """Item 6: the storing limit passes before the post: the job ends TIMED_OUT and nothing is posted."""
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    put = jobs.store.put
    timed_out: list[str] = []

    async def slow_put(data):
        if not timed_out:  # the watchdog's round while the images are being written
            row = await jobs.repo.get(job.id)
            timed_out.extend(await jobs.enforce_timeouts(_later(row, jobs.timeouts.storing + 1)))
        return await put(data)

    jobs.store.put = slow_put
    (done,) = await run_until_done(jobs, [job.id], timeout=180)
    assert timed_out == [job.id]
    assert done.state == JobState.TIMED_OUT
    assert presenter.of(job.id, "succeeded") == []
    assert [reason.split(":")[0] for reason in presenter.of(job.id, "failed")] == ["Timed out"]


class GatedPresenter(RecordingPresenter):
    """Posting the result waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.posting = asyncio.Event()
        self.gate = asyncio.Event()

    async def succeeded(self, job, images) -> None:
        self.posting.set()
        await self.gate.wait()
        await super().succeeded(job, images)


async def test_the_time_limit_does_not_end_a_job_whose_result_is_being_posted(parts):
    """Item 6: the limit passes during the post: the post finishes and the job ends SUCCEEDED only."""
    jobs, _ = service(parts)
    presenter = jobs.presenter = GatedPresenter()
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    jobs.scheduler.start(1, jobs.run)
    try:
        await asyncio.wait_for(presenter.posting.wait(), 180)
        row = await jobs.repo.get(job.id)
        assert row.state == JobState.STORING
        assert await jobs.enforce_timeouts(_later(row, jobs.timeouts.storing + 1)) == []
        presenter.gate.set()
        (done,) = await run_until_done(jobs, [job.id], timeout=180)
    finally:
        await jobs.scheduler.stop()
    assert done.state == JobState.SUCCEEDED
    assert presenter.of(job.id, "failed") == [] and len(presenter.of(job.id, "succeeded")) == 1


class LateProgressEngine(LocalDiffusersEngine):
    """Reports a progress step only after the test lets it go, then honours its cancel token."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.running = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(self, request, on_progress=None, cancel=None):
        self.running.set()
        await self.release.wait()
        on_progress(ProgressUpdate(step=1, total=request.steps))
        if cancel is not None and cancel.cancelled:
            raise EngineCancelled("cancelled")
        raise AssertionError("the token should have been canceled")


class TokenWatchingPresenter(RecordingPresenter):
    def __init__(self, jobs) -> None:
        super().__init__()
        self.jobs = jobs
        self.token_canceled_when_failed: list[bool] = []

    async def failed(self, job, reason) -> None:
        token = self.jobs._cancel_tokens.get(job.id)
        self.token_canceled_when_failed.append(token is not None and token.cancelled)
        await super().failed(job, reason)


async def test_a_late_progress_update_never_follows_timed_out(parts):
    """Item 2: the token is canceled before "Timed out" is shown, and later progress is dropped."""
    default_engine, _, _ = parts
    engine = LateProgressEngine(default_engine.model, "cpu")
    jobs, _ = service(parts, engine=engine)
    presenter = jobs.presenter = TokenWatchingPresenter(jobs)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox"))
    jobs.scheduler.start(1, jobs.run)
    try:
        await asyncio.wait_for(engine.running.wait(), 180)
        row = await jobs.repo.get(job.id)
        assert await jobs.enforce_timeouts(_later(row, jobs.timeouts.processing + 1)) == [job.id]
        engine.release.set()
        (done,) = await run_until_done(jobs, [job.id], timeout=180)
    finally:
        await jobs.scheduler.stop()
    assert done.state == JobState.TIMED_OUT
    assert presenter.token_canceled_when_failed == [True]
    assert [event for event, job_id, _ in presenter.events if job_id == job.id] == ["queued", "failed"]


async def test_a_refused_image_prompt_is_never_loaded_and_saves_nothing(parts):
    """Item 14: the image prompt's admission is decided before the image is fetched."""
    jobs, _ = service(parts)
    loads = []

    async def load_image() -> str:
        loads.append(1)
        return await jobs.store.put_image(Image.new("RGB", (8, 8)))

    await jobs.quotas.users.update(10, banned=True, ban_reason="spam")
    with pytest.raises(AdmissionRefused, match="banned"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("make it blue"), load_image=load_image)
    assert loads == [] and await jobs.repo.unfinished() == [] and await jobs.quotas.ledger.entries() == []
    await jobs.quotas.users.update(10, banned=False)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("make it blue"), load_image=load_image)
    assert loads == [1] and job.params.init_image_key and not job.params.awaiting_image


async def test_an_unusable_image_ends_the_saved_job_uncharged(parts):
    jobs, presenter = service(parts)

    async def unusable() -> str:
        raise AdmissionRefused("That image could not be used: not an image")

    with pytest.raises(AdmissionRefused, match="not an image"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("make it blue"), load_image=unusable)
    assert await jobs.repo.unfinished() == []
    entries = await jobs.quotas.ledger.entries()
    assert sorted(str(e.kind) for e in entries) == ["release", "reserve"]
    assert sum(e.seconds for e in entries) == pytest.approx(0)
    assert presenter.events == []  # the caller answers the user; the presenter shows nothing


async def test_a_job_stopped_while_loading_its_image_fails_at_the_next_start(parts):
    """A process stopped after the acknowledgement, before the image was stored: the job cannot run."""
    jobs, presenter = service(parts)
    started = asyncio.Event()

    async def slow_image() -> str:
        started.set()
        await asyncio.Event().wait()  # the process dies here
        raise AssertionError("never reached")

    submit = asyncio.create_task(
        jobs.submit_imagine(10, acknowledge, parse_prompt("make it blue"), load_image=slow_image)
    )
    await started.wait()
    submit.cancel()  # like a killed process: nothing more is written
    with pytest.raises(asyncio.CancelledError):
        await submit
    (draft,) = await jobs.repo.unfinished()
    assert draft.state == JobState.DRAFT and draft.params.awaiting_image

    assert await jobs.recover() == 1
    job = await jobs.repo.get(draft.id)
    assert job.state == JobState.FAILED
    assert presenter.of(job.id, "failed") == [IMAGE_NOT_LOADED]
    entries = await jobs.quotas.ledger.entries()
    assert sorted(str(e.kind) for e in entries) == ["release", "reserve"]


async def test_an_input_image_no_job_references_is_deleted(parts):
    """Item 14: an image stored for a job refused after all is deleted; one a job uses is kept."""
    jobs, _ = service(parts)
    orphan = await jobs.store.put_image(Image.new("RGB", (8, 8), (1, 2, 3)))
    used = await jobs.store.put_image(Image.new("RGB", (8, 8), (4, 5, 6)))
    await jobs.submit_imagine(10, acknowledge, parse_prompt("make it blue"), init_image_key=used)
    assert await jobs.discard_input_image(orphan) is True
    assert await jobs.discard_input_image(used) is False
    assert not jobs.store.path(orphan).exists() and jobs.store.path(used).exists()
