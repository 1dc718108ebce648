"""Fixtures for job-service tests: the tiny engine, a database (SQLite file or Postgres: the tests that use
``parts`` run on both) and an image folder."""

from __future__ import annotations

import pytest

from engine.local import LocalDiffusersEngine
from storage.db import Database
from storage.images import LocalImageStore


@pytest.fixture
async def parts(tmp_path, tiny_model_dir, database_url):
    engine = LocalDiffusersEngine(str(tiny_model_dir), "cpu")
    await engine.start()
    database = await Database.open(database_url)
    yield engine, database, LocalImageStore(tmp_path / "images")
    await database.close()
    await engine.close()
