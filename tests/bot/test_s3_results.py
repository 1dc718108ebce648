"""Results stored in S3 (moto's server, behind a proxy that breaks uploads on purpose) by the real job
service and tiny engine: a flaky upload is retried and the job ends once; an upload that keeps failing
mid-job fails the job with a message and references nothing; a restart while storing finishes the job
once; and the results table keeps what made each image."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from bot.jobs import STORE_FAILED_REASON
from bot.prompt import parse_prompt
from storage.db import Database
from storage.ledger import LedgerRepository
from storage.models import LedgerKind
from storage.s3_images import S3ImageStore
from storage.states import JobState
from tests.bot.support import acknowledge, run_until_done, service
from tests.s3 import ACCESS_KEY, SECRET_KEY

PROMPT = "a fox in the snow --seed 9"


@pytest.fixture
async def s3_parts(tmp_path, tiny_model_dir, faulty_s3, bucket):
    from engine.local import LocalDiffusersEngine

    engine = LocalDiffusersEngine(str(tiny_model_dir), "cpu")
    await engine.start()
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    store = S3ImageStore(
        bucket, "results", endpoint_url=faulty_s3.endpoint, access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY, attempts=3,
    )  # fmt: skip
    await store.start()
    yield engine, database, store
    await store.close()
    await database.close()
    await engine.close()


async def ledger_kinds(database: Database, job_id: str) -> list[str]:
    return sorted(entry.kind for entry in await LedgerRepository(database).entries(job_id=job_id))


async def test_a_flaky_upload_is_retried_and_the_job_ends_once(s3_parts, faulty_s3, s3_server, bucket):
    faulty_s3.rule = lambda request, puts: 503 if puts in (1, 2) else None  # the 2nd upload fails twice
    jobs, presenter = service(s3_parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt(PROMPT))
    (done,) = await run_until_done(jobs, [job.id], timeout=120)

    assert done.state == JobState.SUCCEEDED and faulty_s3.refused == 2
    assert len(presenter.of(job.id, "succeeded")) == 1
    rows = await jobs.repo.image_rows(job.id)
    assert [row.index for row in rows] == [0, 1, 2, 3]
    assert sorted(row.storage_key for row in rows) == s3_server.keys(bucket)  # every object, each referenced
    for row in rows:
        assert row.storage_key == f"results/{row.key[:2]}/{row.key}.png"
        data = await jobs.store.get(row.key)
        assert hashlib.sha256(data).hexdigest() == row.key and row.byte_size == len(data)
        assert row.prompt_sha256 == hashlib.sha256(done.prompt.encode()).hexdigest()
        assert row.model == "tiny" and row.generation_seconds == done.engine_seconds > 0
    assert await ledger_kinds(s3_parts[1], job.id) == sorted(
        [LedgerKind.RESERVE, LedgerKind.RELEASE, LedgerKind.CHARGE]
    )


async def test_an_upload_failing_mid_job_fails_it_with_a_message_and_references_nothing(s3_parts, faulty_s3):
    faulty_s3.rule = lambda request, puts: 503 if puts >= 2 else None  # two images in, then S3 is down
    jobs, presenter = service(s3_parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt(PROMPT))
    (done,) = await run_until_done(jobs, [job.id], timeout=120)

    assert (done.state, done.error) == (JobState.FAILED, STORE_FAILED_REASON)
    assert faulty_s3.refused == 3  # the third upload, tried three times
    assert presenter.of(job.id, "failed") == [STORE_FAILED_REASON]
    assert presenter.of(job.id, "succeeded") == []
    assert await jobs.repo.images(job.id) == []
    assert await ledger_kinds(s3_parts[1], job.id) == sorted([LedgerKind.RESERVE, LedgerKind.RELEASE])


async def test_a_restart_while_storing_finishes_the_job_once(s3_parts, faulty_s3, s3_server, bucket):
    held, arrived = asyncio.Event(), asyncio.Event()  # the third upload hangs until the "new process" runs

    def hold_the_third(request, puts):
        if puts != 2:
            return None
        arrived.set()
        return held

    faulty_s3.rule = hold_the_third
    jobs, _ = service(s3_parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt(PROMPT))
    jobs.scheduler.start(1, jobs.run)
    await asyncio.wait_for(arrived.wait(), 120)
    assert (await jobs.repo.get(job.id)).state == JobState.STORING
    await jobs.scheduler.stop(grace=0)  # the process dies mid-upload: its work in memory is gone
    held.set()

    again, presenter = service(s3_parts)
    assert await again.recover() == 1
    (done,) = await run_until_done(again, [job.id], timeout=120)
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 1)
    assert len(presenter.of(job.id, "succeeded")) == 1
    rows = await again.repo.image_rows(job.id)
    assert sorted(row.storage_key for row in rows) == s3_server.keys(bucket)  # same keys: nothing doubled
    assert await ledger_kinds(s3_parts[1], job.id) == sorted(
        [LedgerKind.RESERVE, LedgerKind.RELEASE, LedgerKind.CHARGE]
    )
