"""The same migrations on Postgres (asyncpg), on the throwaway cluster of ``tests/postgres.py``."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage import migrations
from storage.db import Database
from storage.jobs import JobRepository
from storage.states import JobState


async def revision_and_differences(url: str) -> tuple[str | None, list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        revision = await connection.run_sync(migrations.current_revision)
        differences = await connection.run_sync(migrations.schema_differences)
    await engine.dispose()
    return revision, differences


async def test_new_postgres_database_opened_at_once_twice(postgres_url):
    first, second = await asyncio.gather(Database.open(postgres_url), Database.open(postgres_url))
    await first.close()
    await second.close()

    assert await revision_and_differences(postgres_url) == (migrations.head_revision(), [])


async def test_create_all_postgres_database_is_stamped_and_keeps_its_data(postgres_url):
    engine = create_async_engine(postgres_url)
    async with engine.begin() as connection:
        await connection.run_sync(migrations.baseline_metadata().create_all)  # what create_all made
        await connection.execute(
            text(
                "INSERT INTO jobs (id, user_id, kind, state, attempts, prompt, negative_prompt, params,"
                " operation, width, height, steps, seed, mode, tier, priority, estimate_seconds,"
                " created_at, updated_at, state_since) VALUES ('j1', 7, 'imagine', 'QUEUED', 0, 'a fox', '',"
                " '{}', 'txt2img', 512, 512, 25, 42, 'fast', '', 0, 0, now(), now(), now())"
            )
        )
    await engine.dispose()

    database = await Database.open(postgres_url)
    try:
        assert (await JobRepository(database).get("j1")).state == JobState.QUEUED
    finally:
        await database.close()
    assert await revision_and_differences(postgres_url) == (migrations.head_revision(), [])
