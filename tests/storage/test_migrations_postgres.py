"""The same migrations on Postgres (asyncpg), when ``IMAGINEBOT_TEST_POSTGRES_URL`` names a scratch database.

Skipped otherwise. The tests empty that database's ``public`` schema: never point it at one you keep.
Example: ``IMAGINEBOT_TEST_POSTGRES_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/scratch``.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage import migrations
from storage.db import Database
from storage.jobs import JobRepository
from storage.states import JobState

POSTGRES_URL = os.environ.get("IMAGINEBOT_TEST_POSTGRES_URL", "")

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="IMAGINEBOT_TEST_POSTGRES_URL is not set")


@pytest.fixture
async def scratch() -> str:
    pytest.importorskip("asyncpg")
    engine = create_async_engine(POSTGRES_URL)
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    return POSTGRES_URL


async def revision_and_differences(url: str) -> tuple[str | None, list[object]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        revision = await connection.run_sync(migrations.current_revision)
        differences = await connection.run_sync(migrations.schema_differences)
    await engine.dispose()
    return revision, differences


async def test_new_postgres_database_opened_at_once_twice(scratch):
    first, second = await asyncio.gather(Database.open(scratch), Database.open(scratch))
    await first.close()
    await second.close()

    assert await revision_and_differences(scratch) == (migrations.head_revision(), [])


async def test_create_all_postgres_database_is_stamped_and_keeps_its_data(scratch):
    engine = create_async_engine(scratch)
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

    database = await Database.open(scratch)
    try:
        assert (await JobRepository(database).get("j1")).state == JobState.QUEUED
    finally:
        await database.close()
    assert await revision_and_differences(scratch) == (migrations.head_revision(), [])
