"""``read_standing``: admission's one read, on SQLite and on Postgres. Each count must take only the user's
own rows, in the states asked for, since the moment asked for; the used seconds only the period's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage.db import Database
from storage.ledger import LedgerRepository
from storage.models import Job, LedgerEntry, LedgerKind, User
from storage.standing import read_standing
from storage.states import JobState

TODAY = datetime(2026, 11, 29, tzinfo=UTC)
PERIOD = datetime(2026, 11, 1, tzinfo=UTC)
EARLIER_PERIOD = datetime(2026, 10, 1, tzinfo=UTC)
WAITING = (JobState.QUEUED, JobState.PROCESSING)
STARTED = (JobState.QUEUED, JobState.PROCESSING, JobState.SUCCEEDED)


@pytest.fixture
async def database(database_url):
    opened = await Database.open(database_url)
    yield opened
    await opened.close()


async def add_jobs(
    database: Database, user_id: int, *states_and_times: tuple[JobState, datetime]
) -> list[Job]:
    jobs = [
        Job(user_id=user_id, prompt="a fox", state=state, created_at=at) for state, at in states_and_times
    ]
    async with database.sessions() as session:
        session.add_all(jobs)
        await session.commit()
    return jobs


async def standing_of(database: Database, user_id: int):
    return await read_standing(
        database, user_id, unfinished=WAITING, started=STARTED, since=TODAY, period_start=PERIOD
    )


async def test_a_user_never_seen_has_no_standing(database):
    assert await standing_of(database, 7) is None


async def test_counts_and_seconds_take_only_what_was_asked(database):
    async with database.sessions() as session:
        session.add_all([User(id=7, name="fox", tier="pro", banned=True), User(id=8, name="other")])
        await session.commit()
    yesterday = TODAY - timedelta(hours=3)
    later = TODAY + timedelta(hours=2)
    mine = await add_jobs(
        database,
        7,
        (JobState.QUEUED, later),  # waiting, started today
        (JobState.PROCESSING, yesterday),  # running, started before today
        (JobState.SUCCEEDED, later),  # started today, finished
        (JobState.FAILED, later),  # neither
    )
    theirs = await add_jobs(database, 8, (JobState.QUEUED, later), (JobState.SUCCEEDED, later))
    ledger = LedgerRepository(database)
    await ledger.add(
        [
            LedgerEntry(
                user_id=7, job_id=mine[0].id, kind=LedgerKind.RESERVE, seconds=4.5, period_start=PERIOD
            ),
            LedgerEntry(
                user_id=7, job_id=mine[2].id, kind=LedgerKind.CHARGE, seconds=2.25, period_start=PERIOD
            ),
            LedgerEntry(user_id=7, kind=LedgerKind.GRANT, seconds=-1.0, period_start=PERIOD, actor_id=1),
            LedgerEntry(
                user_id=7,
                job_id=mine[1].id,
                kind=LedgerKind.CHARGE,
                seconds=99.0,
                period_start=EARLIER_PERIOD,
            ),
            LedgerEntry(
                user_id=8, job_id=theirs[1].id, kind=LedgerKind.CHARGE, seconds=50.0, period_start=PERIOD
            ),
        ]
    )

    standing = await standing_of(database, 7)

    assert standing is not None
    assert (standing.user.id, standing.user.tier, standing.user.banned) == (7, "pro", True)
    assert standing.unfinished_jobs == 2  # QUEUED + PROCESSING, not the other user's QUEUED
    assert standing.jobs_since == 2  # QUEUED and SUCCEEDED today; not yesterday's, not the FAILED one
    assert standing.used_seconds == pytest.approx(4.5 + 2.25 - 1.0)  # this period, this user

    other = await standing_of(database, 8)
    assert other is not None
    assert (other.unfinished_jobs, other.jobs_since, other.used_seconds) == (1, 2, 50.0)


async def test_a_user_with_nothing_yet_counts_zero(database):
    async with database.sessions() as session:
        session.add(User(id=9))
        await session.commit()
    standing = await standing_of(database, 9)
    assert standing is not None
    assert (standing.unfinished_jobs, standing.jobs_since, standing.used_seconds) == (0, 0, 0.0)
