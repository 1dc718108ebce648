"""The bot with two engine servers as separate processes (``python -m engine serve`` on the tiny model).

Jobs spread across both servers; one server is killed (SIGKILL) mid-job and its job finishes on the other,
posted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.app import ImagineBot
from bot.discord_endpoints import apply_discord_endpoints
from bot.engines import build_engine
from engine.pool import EnginePool
from tests.e2e.harness import REPO_ROOT, bot_settings, is_final_grid, wait_for_bot, wait_for_message

pytestmark = pytest.mark.slow

TOKEN = "e2e-engine-token"


class EngineServer:
    def __init__(self, model_dir: Path, log_path: Path, data_dir: Path) -> None:
        self.model_dir, self.log_path, self.data_dir = model_dir, log_path, data_dir
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> None:
        env = {
            **os.environ,
            "MODEL": str(self.model_dir),
            "DEVICE": "cpu",
            "ENGINE_TOKEN": TOKEN,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",  # two servers share 2 cores
            # its own job database: a shared one (the default ./data/engine) would answer a prompt an
            # earlier run made from its result cache at once, and two servers would share one file
            "ENGINE_DATA_DIR": str(self.data_dir),
        }
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0",
            cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=self.log_path.open("ab"),
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 90)
        match = re.search(rb"listening on (http://\S+)", line)
        assert match, line
        self.url = match.group(1).decode()
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError("engine server not ready")

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), 20)
        self.kill()
        return await self.process.wait()


async def test_two_engine_servers_spread_and_fail_over(emu, tiny_model_dir, tmp_path):
    servers = [
        EngineServer(tiny_model_dir, tmp_path / f"engine{i}.log", tmp_path / f"engine{i}") for i in range(2)
    ]
    await asyncio.gather(*(s.start() for s in servers))
    engine_setting = ",".join(s.url.replace("http://", f"http://{TOKEN}@") for s in servers)
    settings = bot_settings(
        emu, tiny_model_dir, tmp_path / "data", engine=engine_setting, model_resolution=128, model_steps=8
    )
    apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
    engine = build_engine(settings)
    assert isinstance(engine, EnginePool)
    engine.health_interval = 0.5
    await engine.start()
    bot = ImagineBot(settings, engine, guild_ready_timeout=0.05)
    task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
    try:
        await wait_for_bot(emu, task)
        assert bot.scheduler is not None and engine.slots == 2

        # two users' jobs at once: one on each server
        other = emu.add_user("other")
        first = await emu.invoke_slash("imagine", {"prompt": "a fox --seed 1"})
        second = await emu.invoke_slash("imagine", {"prompt": "a cat --seed 2"}, user=other)
        for ix in (first, second):
            await wait_for_message(
                emu, lambda m, ix=ix: m.id == ix.response_message_id and is_final_grid(m), timeout=90,
                description="a grid",
            )  # fmt: skip
        assert [s.done for s in engine.status()] == [1, 1]

        # a server dies mid-job: the job is resubmitted to the other one and posted once
        third = await emu.invoke_slash("imagine", {"prompt": "a slow painting --seed 3 --steps 40"})
        await wait_for_message(
            emu, lambda m: m.id == third.response_message_id and re.search(r"\(\d+%\)", m.content),
            timeout=30, description="a progress edit",
        )  # fmt: skip
        victim = next(i for i, s in enumerate(engine.status()) if s.load)
        servers[victim].kill()
        grid = await wait_for_message(
            emu, lambda m: m.id == third.response_message_id and is_final_grid(m), timeout=90,
            description="the grid after failover",
        )  # fmt: skip
        assert len(grid.attachments) == 1
        status = engine.status()
        assert status[1 - victim].done == 2 and status[victim].total_failures >= 1
        assert not status[victim].in_rotation
        finals = [m for m in emu.messages() if is_final_grid(m)]
        assert sorted(m.id for m in finals) == sorted(ix.response_message_id for ix in (first, second, third))
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()
        apply_discord_endpoints(None, None)
        codes = await asyncio.gather(*(s.stop() for s in servers))
    assert codes[1 - victim] == 0  # the survivor stopped cleanly on SIGTERM
    emu.assert_clean()
