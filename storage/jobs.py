"""Job rows and their transitions. Every state change is committed here before its side effects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, update
from sqlmodel import col, select

from storage.db import Database
from storage.models import Job, JobImage, JobTransition, LedgerEntry, utcnow
from storage.states import TERMINAL_STATES, InvalidTransition, JobState, check_transition


class JobNotFound(KeyError):
    pass


@dataclass(frozen=True)
class StoredImage:
    index: int
    key: str
    width: int
    height: int
    seed: int
    storage_key: str | None = None
    byte_size: int | None = None


@dataclass(frozen=True)
class ResultFacts:
    """What the results table keeps beside each image: how the job's images were made."""

    prompt_sha256: str | None = None
    model: str | None = None
    generation_seconds: float | None = None


class JobRepository:
    """``now`` stamps every row, so a test clock (or a clock-skewed host) stays consistent with itself."""

    def __init__(self, database: Database, now: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.now = now

    async def create(
        self, job: Job, ledger: Sequence[LedgerEntry] = (), *, at: datetime | None = None
    ) -> Job:
        """Insert a new job in DRAFT, its first transition and its quota reservation, in one transaction.

        ``at``: when it was accepted (default: now), the moment its reservation's quota period was taken from.
        Every column is set here (none has a database default), so the job is not read back: this runs under
        the user's admission lock, where each round trip counts (``bench/admission_burst.py``).
        """
        job.state = JobState.DRAFT
        job.created_at = job.updated_at = job.state_since = now = at or self.now()
        async with self.database.sessions() as session:
            session.add(job)
            session.add(JobTransition(job_id=job.id, from_state=None, to_state=JobState.DRAFT, at=now))
            session.add_all(list(ledger))
            await session.commit()
        return job

    async def get(self, job_id: str) -> Job:
        async with self.database.sessions() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            return job

    async def find(self, job_id: str) -> Job | None:
        try:
            return await self.get(job_id)
        except JobNotFound:
            return None

    async def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        note: str | None = None,
        retry: bool = False,
        ledger: Sequence[LedgerEntry] = (),
        **fields: Any,
    ) -> Job:
        """Move a job to ``target`` (checked against the state machine), set ``fields`` and add ``ledger``
        entries, atomically: a charge is written exactly when the state that implies it is.

        The UPDATE is conditional on the state we read, so two writers racing on one job cannot both
        win; the loser gets ``InvalidTransition``.
        """
        async with self.database.sessions() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            current = JobState(job.state)
            check_transition(current, target, retry=retry)
            now = self.now()
            values: dict[str, Any] = {"state": target, "updated_at": now, "state_since": now, **fields}
            attempts = job.attempts + 1 if retry else job.attempts
            values["attempts"] = attempts
            if target in TERMINAL_STATES:
                values["finished_at"] = now
            result = await session.execute(
                update(Job).where(col(Job.id) == job_id, col(Job.state) == current).values(**values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                await session.rollback()
                raise InvalidTransition(f"job {job_id} changed state while moving {current} -> {target}")
            session.add(
                JobTransition(
                    job_id=job_id, from_state=current, to_state=target, attempt=attempts, note=note, at=now
                )
            )
            session.add_all(list(ledger))
            await session.commit()
        return await self.get(job_id)

    async def update_fields(self, job_id: str, **fields: Any) -> None:
        """Change non-state fields (message ids, engine name...)."""
        if "state" in fields:
            raise ValueError("use transition() to change a job's state")
        async with self.database.sessions() as session:
            await session.execute(
                update(Job).where(col(Job.id) == job_id).values(updated_at=self.now(), **fields)
            )
            await session.commit()

    async def unfinished(self, user_id: int | None = None) -> Sequence[Job]:
        """Jobs not yet in a terminal state (all, or one user's), oldest first."""
        statement = (
            select(Job).where(col(Job.state).not_in(list(TERMINAL_STATES))).order_by(col(Job.created_at))
        )
        if user_id is not None:
            statement = statement.where(col(Job.user_id) == user_id)
        async with self.database.sessions() as session:
            return (await session.exec(statement)).all()

    async def created_since(self, since: datetime) -> Sequence[Job]:
        """Every job created at or after ``since``, oldest first."""
        statement = select(Job).where(col(Job.created_at) >= since).order_by(col(Job.created_at))
        async with self.database.sessions() as session:
            return (await session.exec(statement)).all()

    async def transitions(self, job_id: str) -> Sequence[JobTransition]:
        async with self.database.sessions() as session:
            statement = (
                select(JobTransition).where(JobTransition.job_id == job_id).order_by(col(JobTransition.id))
            )
            return (await session.exec(statement)).all()

    async def replace_images(
        self, job_id: str, images: Sequence[StoredImage], facts: ResultFacts | None = None
    ) -> None:
        """Record a job's result images; a retried store replaces the rows instead of doubling them."""
        facts = facts or ResultFacts()
        async with self.database.sessions() as session:
            existing = (await session.exec(select(JobImage).where(JobImage.job_id == job_id))).all()
            for row in existing:
                await session.delete(row)
            for image in images:
                session.add(
                    JobImage(
                        job_id=job_id,
                        index=image.index,
                        key=image.key,
                        width=image.width,
                        height=image.height,
                        seed=image.seed,
                        storage_key=image.storage_key,
                        byte_size=image.byte_size,
                        prompt_sha256=facts.prompt_sha256,
                        model=facts.model,
                        generation_seconds=facts.generation_seconds,
                    )
                )
            await session.commit()

    async def references_image(self, key: str) -> bool:
        """Whether any job uses the image ``key``: as a result image or as its image prompt (in ``params``)."""
        if not key.isalnum():  # keys are hex digests; anything else is referenced by nothing
            return False
        async with self.database.sessions() as session:
            result = (await session.exec(select(JobImage.id).where(JobImage.key == key).limit(1))).first()
            if result is not None:
                return True
            statement = select(Job.id).where(cast(Job.params, String).contains(key)).limit(1)
            return (await session.exec(statement)).first() is not None

    async def images(self, job_id: str) -> list[StoredImage]:
        async with self.database.sessions() as session:
            statement = select(JobImage).where(JobImage.job_id == job_id).order_by(col(JobImage.index))
            rows = (await session.exec(statement)).all()
        return [
            StoredImage(r.index, r.key, r.width, r.height, r.seed, r.storage_key, r.byte_size) for r in rows
        ]

    async def image_rows(self, job_id: str) -> Sequence[JobImage]:
        """The results table's rows of a job (with what made them), by index."""
        async with self.database.sessions() as session:
            statement = select(JobImage).where(JobImage.job_id == job_id).order_by(col(JobImage.index))
            return (await session.exec(statement)).all()
