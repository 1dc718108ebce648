"""Two ``python -m bot`` processes, one Postgres database: one active, one standby that takes over when
the active one is killed (SIGKILL) and finishes its job: posted once, charged once. And SQLite's rule:
a second process on the same file is refused with a clear message.

The failover time (kill → the standby connected to Discord, and kill → the result posted) is printed;
run with ``-s`` to see it. It is measured, never asserted beyond the lease's promise.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.lease import SqliteOwnership
from tests.e2e.harness import (
    REPO_ROOT,
    BotProcess,
    bot_environment,
    is_final_grid,
    wait_for_bot,
    wait_for_message,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

LEASE_SECONDS = 3


async def wait_for_output(process: BotProcess, pattern: str, timeout: float = 90) -> None:
    """Until the process's log shows ``pattern`` (it writes nothing else we could wait on)."""
    async with asyncio.timeout(timeout):
        while not re.search(pattern, process.output()):
            assert process.process is not None and process.process.returncode is None, process.output()[
                -3000:
            ]
            await asyncio.sleep(0.1)


async def job_rows(url: str) -> tuple[list[tuple[str, int]], int, list[str]]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        jobs = [
            (row.state, row.attempts)
            for row in await connection.execute(text("SELECT state, attempts FROM jobs"))
        ]
        succeeded = (
            await connection.execute(
                text("SELECT count(*) FROM job_transitions WHERE to_state = 'SUCCEEDED'")
            )
        ).scalar_one()
        ledger = [
            row.kind for row in await connection.execute(text("SELECT kind FROM quota_ledger ORDER BY id"))
        ]
    await engine.dispose()
    return jobs, succeeded, ledger


async def test_standby_takes_over_after_kill_9_and_finishes_the_job_once(
    emu, tiny_model_dir, tmp_path, postgres_url
):
    env = bot_environment(
        emu, tiny_model_dir, tmp_path / "data", database_url=postgres_url, lease_seconds=LEASE_SECONDS
    )
    active = BotProcess(env, tmp_path / "active.log")
    standby = BotProcess(env, tmp_path / "standby.log")
    await active.start()
    try:
        await wait_for_bot(emu, timeout=120)
        await standby.start()
        await wait_for_output(standby, r"standby: ")
        assert emu.gateway.identifies == 1, "the standby must not connect while the active process lives"

        ix = await emu.invoke_slash("imagine", {"prompt": "a slow oil painting --steps 24 --seed 5"})
        assert await ix.wait_for_response(3) == 5
        await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and re.search(r"\(\d+%\)", m.content),
            description="a progress edit",
        )
    finally:
        await active.stop(signal.SIGKILL)
    killed = time.monotonic()
    try:
        await emu.wait_for(lambda: emu.gateway.identifies == 2, timeout=60, what="the standby connecting")
        connected = time.monotonic() - killed
        print(f"\nfailover (LEASE_SECONDS={LEASE_SECONDS}): SIGKILL -> standby connected {connected:.2f}s")
        grid = await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and is_final_grid(m),
            timeout=240,
            description="the grid",
        )
        posted = time.monotonic() - killed
        assert "(fast)" in grid.content and len(grid.attachments) == 1
    finally:
        exit_code = await standby.stop(signal.SIGTERM, timeout=60)
    print(f"failover (LEASE_SECONDS={LEASE_SECONDS}): SIGKILL -> the dead process's job posted {posted:.2f}s")
    assert exit_code == 0, standby.output()[-3000:]
    assert connected < LEASE_SECONDS + 30  # the lease's promise, with room for a loaded CI machine's connect

    assert [m.id for m in emu.messages() if not m.ephemeral] == [ix.response_message_id]
    jobs, succeeded, ledger = await job_rows(postgres_url)
    assert (jobs, succeeded) == ([("SUCCEEDED", 1)], 1)  # re-run once by the standby, succeeded once
    assert sorted(ledger) == ["charge", "release", "reserve"]  # charged once
    assert "active: this process" in standby.output()
    emu.assert_clean()


async def test_a_second_process_on_the_same_sqlite_file_is_refused(tmp_path):
    data = tmp_path / "data"
    holder = SqliteOwnership(f"sqlite+aiosqlite:///{data / 'imaginebot.db'}")
    await holder.claim()  # as a running bot holds it
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
        env |= {"DISCORD_TOKEN": "x" * 30, "DATA_DIR": str(data), "MODEL": "unused"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await holder.close()
    assert process.returncode == 2
    message = err.decode().strip()
    assert message.startswith(
        f"imaginebot: another imaginebot process is already using {data / 'imaginebot.db'}"
    )
    assert "use Postgres" in message
