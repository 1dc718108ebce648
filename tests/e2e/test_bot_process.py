"""``python -m bot`` as its own process, configured only through settings; killed with SIGKILL mid-job."""

from __future__ import annotations

import re
import signal
import sqlite3

import pytest

from tests.e2e.harness import BotProcess, bot_environment, is_final_grid, wait_for_bot, wait_for_message

pytestmark = pytest.mark.slow


async def test_bot_process_finishes_a_job_after_kill_9(emu, tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    env = bot_environment(emu, tiny_model_dir, data_dir)
    first = BotProcess(env, tmp_path / "bot.log")
    await first.start()
    try:
        await wait_for_bot(emu, timeout=90)
        ix = await emu.invoke_slash("imagine", {"prompt": "a slow oil painting --steps 40 --seed 5"})
        assert await ix.wait_for_response(3) == 5
        await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and re.search(r"\(\d+%\)", m.content),
            description="a progress edit",
        )
    finally:
        await first.stop(signal.SIGKILL)

    second = BotProcess(env, tmp_path / "bot.log")
    identified = emu.gateway.identifies
    await second.start()
    try:
        await emu.wait_for(lambda: emu.gateway.identifies > identified, timeout=90, what="the restarted bot")
        grid = await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and is_final_grid(m),
            timeout=90,
            description="the grid",
        )
        assert "(fast)" in grid.content and len(grid.attachments) == 1
    finally:
        exit_code = await second.stop(signal.SIGTERM)
    assert exit_code == 0, second.output()[-2000:]

    # one message for the job (edited, never duplicated); the job ran twice and succeeded once
    bot_messages = [m for m in emu.messages() if not m.ephemeral]
    assert [m.id for m in bot_messages] == [ix.response_message_id]
    with sqlite3.connect(data_dir / "imaginebot.db") as db:
        state, attempts = db.execute("SELECT state, attempts FROM jobs").fetchone()
        succeeded = db.execute("SELECT count(*) FROM job_transitions WHERE to_state='SUCCEEDED'").fetchone()[
            0
        ]
    assert (state, attempts, succeeded) == ("SUCCEEDED", 1, 1)
    assert "loading model" in second.output()
    emu.assert_clean()


async def test_bot_process_explains_a_missing_token(tmp_path):
    import asyncio
    import sys

    from tests.e2e.harness import REPO_ROOT

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert err.decode().strip().splitlines() == [
        "imaginebot: DISCORD_TOKEN is not set. Create an application at "
        "https://discord.com/developers/applications, open Bot → Reset Token, and put DISCORD_TOKEN=<token> in .env "
        "(or try it without Discord first: python -m bot sandbox)"
    ]
