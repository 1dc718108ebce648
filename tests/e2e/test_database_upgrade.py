"""``python -m bot`` on a database from before schema migrations: upgraded in place, or refused in one line."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

import pytest

from storage import migrations
from tests.e2e.harness import BotProcess, bot_environment, is_final_grid, wait_for_bot, wait_for_message
from tests.storage.test_migrations import make_legacy_database

pytestmark = pytest.mark.slow


async def test_the_bot_upgrades_an_old_database_and_keeps_its_rows(emu, tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_legacy_database(data_dir / "imaginebot.db")
    bot = BotProcess(bot_environment(emu, tiny_model_dir, data_dir), tmp_path / "bot.log")
    await bot.start()
    try:
        await wait_for_bot(emu, timeout=90)
        ix = await emu.invoke_slash("imagine", {"prompt": "a small lighthouse --seed 3"})
        assert await ix.wait_for_response(3) == 5
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m), timeout=90, description="grid"
        )
    finally:
        exit_code = await bot.stop(signal.SIGTERM)
    assert exit_code == 0, bot.output()[-2000:]
    assert "stamped at baseline" in bot.output()

    with sqlite3.connect(data_dir / "imaginebot.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (migrations.head_revision(),)
        ]
        prompts = {row[0] for row in db.execute("SELECT prompt FROM jobs WHERE state = 'SUCCEEDED'")}
    assert {"a red fox", "a small lighthouse"} <= prompts  # the old job and the new one
    emu.assert_clean()


async def test_the_bot_explains_a_database_it_cannot_upgrade(emu, tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_legacy_database(data_dir / "imaginebot.db", then="ALTER TABLE users DROP COLUMN remix;")
    bot = BotProcess(bot_environment(emu, tiny_model_dir, data_dir), tmp_path / "bot.log")
    await bot.start()
    assert bot.process is not None
    exit_code = await asyncio.wait_for(bot.process.wait(), 90)  # it stops by itself

    assert exit_code == 2, bot.output()[-2000:]
    errors = [line for line in bot.output().splitlines() if line.startswith("imaginebot:")]
    assert len(errors) == 1 and "database" in errors[0] and "users.remix" in errors[0], bot.output()[-2000:]
    assert "Traceback" not in bot.output()
    emu.assert_clean()
