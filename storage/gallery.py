"""What the web gallery reads: a user's finished results (newest first, with images and ❤️) and who owns an image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from storage.db import Database
from storage.jobs import StoredImage
from storage.models import Favourite, Job, JobImage
from storage.states import JobState

MAX_RESULTS = 200


@dataclass(frozen=True)
class GalleryItem:
    """One finished job as the gallery shows it."""

    job_id: str
    kind: str
    operation: str
    prompt: str
    negative_prompt: str
    params: dict[str, Any]
    model: str | None
    width: int
    height: int
    steps: int
    seed: int
    finished_at: str
    favourite: bool
    images: tuple[StoredImage, ...]


class GalleryRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def results(self, user_id: int, text: str = "", limit: int = MAX_RESULTS) -> list[GalleryItem]:
        """``user_id``'s succeeded jobs that have images, newest first; ``text`` filters on the prompt
        (case-insensitive substring)."""
        statement = (
            select(Job)
            .where(col(Job.user_id) == user_id, col(Job.state) == JobState.SUCCEEDED)
            .order_by(col(Job.finished_at).desc(), col(Job.created_at).desc())
            .limit(limit)
        )
        if text.strip():
            pattern = "%" + text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            statement = statement.where(col(Job.prompt).ilike(pattern, escape="\\"))
        async with self.database.sessions() as session:
            jobs = (await session.exec(statement)).all()
            ids = [job.id for job in jobs]
            image_rows = (
                await session.exec(
                    select(JobImage).where(col(JobImage.job_id).in_(ids)).order_by(col(JobImage.index))
                )
            ).all()
            favourites = set(
                (
                    await session.exec(
                        select(Favourite.job_id).where(
                            col(Favourite.user_id) == user_id, col(Favourite.job_id).in_(ids)
                        )
                    )
                ).all()
            )
        images: dict[str, list[StoredImage]] = {}
        for row in image_rows:
            images.setdefault(row.job_id, []).append(
                StoredImage(row.index, row.key, row.width, row.height, row.seed)
            )
        return [
            GalleryItem(
                job_id=job.id,
                kind=job.kind,
                operation=job.operation,
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                params=dict(job.params or {}),
                model=job.model,
                width=job.width,
                height=job.height,
                steps=job.steps,
                seed=job.seed,
                finished_at=(job.finished_at or job.updated_at).strftime("%Y-%m-%d %H:%M UTC"),
                favourite=job.id in favourites,
                images=tuple(images[job.id]),
            )
            for job in jobs
            if job.id in images
        ]

    async def image_owners(self, key: str) -> set[int]:
        """The users whose succeeded jobs hold the image ``key`` (identical bytes can be in several)."""
        statement = (
            select(Job.user_id)
            .join(JobImage, col(JobImage.job_id) == col(Job.id))
            .where(col(JobImage.key) == key, col(Job.state) == JobState.SUCCEEDED)
        )
        async with self.database.sessions() as session:
            return {int(uid) for uid in (await session.exec(statement)).all()}
