"""Several processes' worth of writers (separate engines, separate connection pools) racing on one job,
on SQLite and on Postgres: the conditional state update lets exactly one win each step, and the quota
ledger's one-entry-per-job-and-kind rule holds, so a job is charged once however many writers try."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.jobs import JobRepository
from storage.ledger import LedgerRepository
from storage.models import Job, LedgerEntry, LedgerKind
from storage.states import InvalidTransition, JobState

WRITERS = 6
PERIOD = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def databases(database_url):
    """``WRITERS`` independent Database objects on one database, as if each were its own process."""
    opened = [await Database.open(database_url) for _ in range(WRITERS)]
    yield opened
    for database in opened:
        await database.close()


def charge(job: Job, seconds: float) -> LedgerEntry:
    return LedgerEntry(
        user_id=job.user_id, job_id=job.id, kind=LedgerKind.CHARGE, seconds=seconds, period_start=PERIOD
    )


async def test_racing_writers_move_a_job_once_per_step_and_charge_it_once(databases):
    repos = [JobRepository(database) for database in databases]
    job = await repos[0].create(Job(user_id=9, prompt="a fox"))
    await repos[0].transition(job.id, JobState.SUBMITTED)
    await repos[0].transition(job.id, JobState.QUEUED)

    async def claim(repo: JobRepository) -> bool:
        try:
            await repo.transition(job.id, JobState.PROCESSING)
        except InvalidTransition:
            return False
        return True

    claims = await asyncio.gather(*(claim(repo) for repo in repos))
    assert claims.count(True) == 1, claims

    await repos[0].transition(job.id, JobState.GENERATED)
    await repos[0].transition(job.id, JobState.STORING)

    async def finish(repo: JobRepository, seconds: float) -> bool:
        try:
            await repo.transition(job.id, JobState.SUCCEEDED, ledger=[charge(job, seconds)])
        except (InvalidTransition, IntegrityError):
            return False
        return True

    finishes = await asyncio.gather(*(finish(repo, float(i + 1)) for i, repo in enumerate(repos)))
    assert finishes.count(True) == 1, finishes

    history = await repos[0].transitions(job.id)
    assert [t.to_state for t in history].count(JobState.PROCESSING) == 1
    assert [t.to_state for t in history].count(JobState.SUCCEEDED) == 1
    ledger = LedgerRepository(databases[0])
    entries = await ledger.entries(job_id=job.id)
    assert [entry.kind for entry in entries] == [LedgerKind.CHARGE]
    assert await ledger.used(9, PERIOD) == entries[0].seconds


async def test_racing_charges_without_a_state_change_still_land_once(databases):
    """The ledger's unique (job, kind) alone: writers that skip the state check still cannot double-charge."""
    repos = [JobRepository(database) for database in databases]
    job = await repos[0].create(Job(user_id=4, prompt="an owl"))

    async def add(database: Database) -> bool:
        try:
            await LedgerRepository(database).add([charge(job, 2.5)])
        except IntegrityError:
            return False
        return True

    added = await asyncio.gather(*(add(database) for database in databases))
    assert added.count(True) == 1
    assert await LedgerRepository(databases[0]).used(4, PERIOD) == 2.5
