"""Schema migrations on real SQLite files: new databases, pre-migration ``create_all`` databases, and a check
that ``storage/models.py`` has no change that no revision makes."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from storage import migrations
from storage.db import Database
from storage.jobs import JobRepository
from storage.ledger import LedgerRepository
from storage.models import Job, LedgerEntry, LedgerKind
from storage.params import JobParams
from storage.states import JobState
from storage.users import UserRepository

LEGACY_SCHEMA = Path(__file__).with_name("legacy_create_all.sql")
TABLES = set(SQLModel.metadata.tables)


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def tables_and_revision(path: Path) -> tuple[set[str], list[str]]:
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = (
            [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
            if "alembic_version" in tables
            else []
        )
    return tables, versions


def make_legacy_database(path: Path, *, then: str = "") -> None:
    """A database as the pre-migration code left it: the create_all schema and some rows, no alembic_version.
    ``then``: SQL run afterwards, to make it differ."""
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA.read_text())
        db.executescript(
            """
            INSERT INTO users (id, name, tier, mode, banned, preferences, suffix, remix, created_at)
            VALUES (7, 'ann', 'pro', 'relax', 0, '{"stylize": 250}', '--ar 3:2', 1, '2026-11-20 10:00:00.000000');
            INSERT INTO jobs (id, user_id, kind, state, attempts, prompt, negative_prompt, params, operation,
                              width, height, steps, seed, mode, tier, priority, estimate_seconds,
                              created_at, updated_at, state_since)
            VALUES ('0123456789abcdef0123456789abcdef', 7, 'imagine', 'SUCCEEDED', 0, 'a red fox', '',
                    '{"display": "a red fox"}', 'txt2img', 512, 512, 25, 42, 'fast', 'pro', 2, 12.5,
                    '2026-11-20 10:00:00.000000', '2026-11-20 10:01:00.000000', '2026-11-20 10:01:00.000000');
            INSERT INTO job_transitions (job_id, from_state, to_state, attempt, at)
            VALUES ('0123456789abcdef0123456789abcdef', NULL, 'DRAFT', 0, '2026-11-20 10:00:00.000000');
            INSERT INTO quota_ledger (user_id, job_id, kind, seconds, period_start, at)
            VALUES (7, '0123456789abcdef0123456789abcdef', 'charge', 11.0,
                    '2026-11-01 00:00:00.000000', '2026-11-20 10:01:00.000000');
            """
        )
        db.executescript(then)


async def test_a_new_database_is_created_at_the_newest_revision(tmp_path):
    database = await Database.open(url(tmp_path / "new" / "bot.db"))
    await database.close()

    tables, versions = tables_and_revision(tmp_path / "new" / "bot.db")
    assert tables == TABLES | {"alembic_version"}
    assert versions == [migrations.head_revision()]
    with sqlite3.connect(tmp_path / "new" / "bot.db") as db:
        ledger = db.execute("SELECT sql FROM sqlite_master WHERE name = 'quota_ledger'").fetchone()[0]
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "CONSTRAINT one_entry_per_job_and_kind UNIQUE (job_id, kind)" in ledger
    assert {"ix_jobs_state", "ix_jobs_user_id", "ix_quota_ledger_period_start"} <= indexes


async def test_a_create_all_database_is_stamped_upgraded_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    make_legacy_database(path)
    assert tables_and_revision(path) == (TABLES, [])

    database = await Database.open(url(path))
    try:
        assert tables_and_revision(path) == (TABLES | {"alembic_version"}, [migrations.head_revision()])
        jobs = JobRepository(database)
        job = await jobs.get("0123456789abcdef0123456789abcdef")
        assert (job.state, job.prompt, job.params, job.seed) == (
            JobState.SUCCEEDED,
            "a red fox",
            JobParams(display="a red fox"),  # an old row's plain dict, read as JobParams
            42,
        )
        assert [t.to_state for t in await jobs.transitions(job.id)] == [JobState.DRAFT]
        user = await UserRepository(database).get(7)
        assert (user.tier, user.mode, user.preferences, user.suffix, user.remix) == (
            "pro",
            "relax",
            {"stylize": 250},
            "--ar 3:2",
            True,
        )

        # new rows go in beside the old ones, and the ledger's one-entry-per-job-and-kind rule still holds
        new = await jobs.create(Job(user_id=7, prompt="an owl"))
        await jobs.transition(new.id, JobState.SUBMITTED)
        ledger = LedgerRepository(database)
        period = datetime(2026, 11, 1, tzinfo=UTC)
        entry = dict(user_id=7, job_id=job.id, kind=LedgerKind.CHARGE, seconds=1.0, period_start=period)
        with pytest.raises(IntegrityError):
            await ledger.add([LedgerEntry(**entry)])
        assert await ledger.used(7, period) == 11.0
    finally:
        await database.close()


async def test_a_create_all_database_without_a_later_table_gets_it(tmp_path):
    path = tmp_path / "old.db"
    make_legacy_database(path, then="DROP TABLE favourites; DROP TABLE banned_words;")

    database = await Database.open(url(path))
    await database.close()

    assert tables_and_revision(path) == (TABLES | {"alembic_version"}, [migrations.head_revision()])


async def test_a_database_older_than_the_baseline_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "ancient.db"
    make_legacy_database(path, then="ALTER TABLE users DROP COLUMN remix;")

    with pytest.raises(migrations.MigrationError, match=r"users\.remix"):
        await Database.open(url(path))

    assert tables_and_revision(path) == (TABLES, [])


async def test_opening_twice_and_at_once_is_safe(tmp_path):
    path = tmp_path / "shared.db"
    # two processes starting together on a new file: one upgrades, the other waits and finds nothing to do
    first, second = await asyncio.gather(Database.open(url(path)), Database.open(url(path)))
    await first.close()
    await second.close()
    again = await Database.open(url(path))  # and once more, later: nothing to do
    await again.close()

    assert tables_and_revision(path) == (TABLES | {"alembic_version"}, [migrations.head_revision()])


def test_the_baseline_revision_makes_what_create_all_made(tmp_path):
    """The baseline must equal the pre-migration schema, or stamping old databases would be a lie."""
    legacy = tmp_path / "legacy.db"
    make_legacy_database(legacy)
    baseline = tmp_path / "baseline.db"
    engine = create_engine(f"sqlite:///{baseline}")
    with engine.begin() as connection:
        command.upgrade(migrations.alembic_config(connection), migrations.BASELINE_REVISION)
    engine.dispose()

    assert describe(baseline) == describe(legacy)


def describe(path: Path) -> dict[str, object]:
    """Every table's columns, keys, indexes and constraints, as SQLAlchemy reflects them."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        inspector = inspect(connection)
        names = sorted(set(inspector.get_table_names()) - {"alembic_version"})
        description: dict[str, object] = {
            name: (
                [
                    (c["name"], str(c["type"]), c["nullable"], c["primary_key"])
                    for c in inspector.get_columns(name)
                ],
                sorted(
                    (i["name"], tuple(i["column_names"]), i["unique"]) for i in inspector.get_indexes(name)
                ),
                sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)),
                sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                    for f in inspector.get_foreign_keys(name)
                ),
            )
            for name in names
        }
    engine.dispose()
    return description


def schema_differences_at_head(path: Path, change: str = "") -> list[object]:
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        migrations.upgrade(connection)
        if change:
            connection.exec_driver_sql(change)
        differences = migrations.schema_differences(connection)
    engine.dispose()
    return differences


def test_the_models_match_the_migrations(tmp_path):
    differences = schema_differences_at_head(tmp_path / "head.db")
    assert not differences, (
        "storage/models.py differs from the schema the migrations make:\n"
        + "\n".join(f"  {difference}" for difference in differences)
        + '\nAdd a migration: python -m storage.migrations revision -m "what changed" '
        "(then review the file in storage/migrations/versions/)"
    )


def test_the_models_check_sees_a_missing_index(tmp_path):
    differences = schema_differences_at_head(tmp_path / "head.db", "DROP INDEX ix_jobs_state")
    assert [d[0] for d in differences] == ["add_index"]


async def test_a_failing_revision_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    """Each upgrade is one transaction: a revision that fails half-way takes its changes with it."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "versions" / "0999_broken.py").write_text(
        'revision = "0999"\n'
        f"down_revision = {migrations.head_revision()!r}\n"
        "from alembic import op\n"
        "import sqlalchemy as sa\n"
        "def upgrade() -> None:\n"
        '    op.add_column("users", sa.Column("locale", sa.String(), nullable=True))\n'
        "    op.execute(\"UPDATE users SET locale = 'en'\")\n"
        '    raise RuntimeError("half-way")\n'
    )
    path = tmp_path / "bot.db"
    make_legacy_database(path)
    monkeypatch.setattr(migrations, "MIGRATIONS_DIR", folder)
    migrations.script_directory.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="half-way"):
            await Database.open(url(path))
    finally:
        migrations.script_directory.cache_clear()

    assert tables_and_revision(path) == (TABLES, [])  # not even stamped
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
    assert "locale" not in columns
