"""A user's standing for admission, read in one statement: their row, their unfinished jobs, the jobs they
started since a moment, and the fast time they used in a quota period.

Admission runs under the user's lock (``QuotaService.lock``), and a burst of clicks by one user queues on
it, each waiting for every admission before it. Four separate queries cost four sessions, each several
round trips to the driver's thread (aiosqlite runs every cursor call on a thread of its own, and each
handoff waits for the GIL beside a busy in-process engine), so the reads are one statement here:
``bench/admission_burst.py`` measures the difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlmodel import col

from storage.db import Database
from storage.models import Job, LedgerEntry, User
from storage.states import JobState


@dataclass(frozen=True)
class Standing:
    user: User
    unfinished_jobs: int
    """Jobs in any of the ``unfinished`` states given: one count, so a job moving from waiting to running
    meanwhile is never counted twice."""
    jobs_since: int
    """Jobs created at or after ``since`` in any of the ``started`` states given."""
    used_seconds: float
    """The sum of the user's ledger entries in the period: fast time used, reservations included."""


async def read_standing(
    database: Database,
    user_id: int,
    *,
    unfinished: Iterable[JobState],
    started: Iterable[JobState],
    since: datetime,
    period_start: datetime,
) -> Standing | None:
    """The user's standing, or None for a user never seen (no row yet)."""
    jobs_of_user = col(Job.user_id) == user_id
    unfinished_jobs = (
        select(func.count())
        .select_from(Job)
        .where(jobs_of_user, col(Job.state).in_(list(unfinished)))
        .scalar_subquery()
    )
    jobs_since = (
        select(func.count())
        .select_from(Job)
        .where(jobs_of_user, col(Job.state).in_(list(started)), col(Job.created_at) >= since)
        .scalar_subquery()
    )
    used_seconds = (
        select(func.coalesce(func.sum(col(LedgerEntry.seconds)), 0.0))
        .where(col(LedgerEntry.user_id) == user_id, col(LedgerEntry.period_start) == period_start)
        .scalar_subquery()
    )
    statement = select(User, unfinished_jobs, jobs_since, used_seconds).where(col(User.id) == user_id)
    async with database.sessions() as session:
        row = (await session.execute(statement)).one_or_none()
    if row is None:
        return None
    user, unfinished_count, since_count, used = row
    return Standing(user, int(unfinished_count), int(since_count), float(used))
