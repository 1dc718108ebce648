"""The bot in front of third-party backends: fake A1111, ComfyUI and Replicate servers as their own processes.

Through real discord.py and the emulator: ``/imagine`` shows progress (with a preview where the backend sends
one), then a grid whose U/V/🔄 work; a backend killed mid-job fails over to another kind of backend and the
job is posted once; an operation no configured backend can do is refused privately and nothing is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from bot.app import ImagineBot
from bot.discord_endpoints import apply_discord_endpoints
from bot.engines import build_engine
from engine.pool import EnginePool
from engine.safe_fetch import FetchPolicy
from sandbox.discord_emulator import DiscordEmulator
from tests.e2e.harness import REPO_ROOT, bot_settings, is_final_grid, wait_for_bot, wait_for_message
from tests.e2e.test_imagine_flow import (
    DEFERRED,
    MESSAGE,
    _all_jobs,
    _all_terminal,
    click_and_wait,
    job_id_of,
    picture,
)
from tests.e2e.test_tiers_and_admin import command

pytestmark = pytest.mark.slow

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
STEP_DELAY = 0.05


class FakeBackend:
    """``python -m tests.fakes.<kind>`` as a child process (killable with SIGKILL like a crashed server)."""

    def __init__(
        self, kind: str, log_path: Path, *, step_delay: float = STEP_DELAY, poll: float = 0.1
    ) -> None:
        self.kind, self.log_path = kind, log_path
        self.step_delay, self.poll = step_delay, poll
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> str:
        args = ["--port", "0", "--step-delay", str(self.step_delay)]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"tests.fakes.{self.kind}", *args, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=asyncio.subprocess.PIPE,
            stderr=self.log_path.open("ab"),
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        match = re.search(rb"listening on (http://\S+)", line)
        assert match, line
        self.url = match.group(1).decode()
        return self.url

    def entry(self) -> str:
        """The ``ENGINE`` item for this backend."""
        host = self.url.removeprefix("http://")
        return {
            "a1111": f"a1111+http://{host}?poll={self.poll}",
            "comfyui": f"comfyui+http://{host}",
            "replicate": f"replicate+http://r8_test@{host}/stability-ai/sdxl?poll={self.poll}",
        }[self.kind]

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
            self.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def bot_on(
    emu: DiscordEmulator, backends: list[FakeBackend], data_dir: Path, **extra: object
) -> AsyncIterator[tuple[ImagineBot, EnginePool]]:
    settings = bot_settings(
        emu,
        Path(CHECKPOINT),
        data_dir,
        engine=",".join(b.entry() for b in backends),
        model_resolution=64,
        **extra,
    )
    apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
    engine = build_engine(settings)
    assert isinstance(engine, EnginePool)
    engine.health_interval = 0.5
    for adapter in engine.engines:
        if hasattr(adapter, "fetch_policy"):  # the fake serves its outputs from loopback
            adapter.fetch_policy = FetchPolicy(allowed_networks=(ip_network("127.0.0.0/8"),))
    await engine.start()
    bot = ImagineBot(settings, engine, guild_ready_timeout=0.05)
    task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
    try:
        await wait_for_bot(emu, task)
        yield bot, engine
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()
        apply_discord_endpoints(None, None)


@contextlib.asynccontextmanager
async def fakes(kinds: list[str], tmp_path: Path) -> AsyncIterator[list[FakeBackend]]:
    backends = [FakeBackend(kind, tmp_path / f"{kind}-{i}.log") for i, kind in enumerate(kinds)]
    try:
        await asyncio.gather(*(b.start() for b in backends))
        yield backends
    finally:
        await asyncio.gather(*(b.stop() for b in backends))


@pytest.mark.parametrize("kind", ["a1111", "comfyui", "replicate"])
async def test_imagine_against_each_backend(emu, tmp_path, kind):
    async with fakes([kind], tmp_path) as backends, bot_on(emu, backends, tmp_path / "data") as (bot, engine):
        ix = await emu.invoke_slash("imagine", {"prompt": "a red fox --seed 5 --steps 30"})
        assert await ix.wait_for_response(3) == DEFERRED
        grid_message = await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and is_final_grid(m),
            timeout=60,
            description="the grid",
        )
        seen = [(entry["content"], entry["attachments"]) for entry in grid_message.history]
        progress = [(c, a) for c, a in seen if re.search(r"\(\d{1,3}%\)", c)]
        assert progress, seen
        if kind in ("a1111", "comfyui"):  # the backends that send previews
            assert any(names == ["preview.jpg"] for _, names in progress)
        assert picture(grid_message).size == (128, 128)
        job_id = job_id_of(grid_message)

        upscale = await click_and_wait(
            emu, grid_message, f"ib:u:{job_id}:0", lambda m: bool(m.attachments) and "Image #1" in m.content
        )
        assert picture(upscale).size == (64, 64)
        variation = await click_and_wait(emu, grid_message, f"ib:v:{job_id}:1", is_final_grid)
        assert job_id_of(variation) != job_id and picture(variation).size == (128, 128)
        reroll = await click_and_wait(emu, grid_message, f"ib:r:{job_id}", is_final_grid)
        assert picture(reroll).tobytes() != picture(grid_message).tobytes()
        assert engine.status()[0].done == 3 and engine.status()[0].kind == kind
    emu.assert_clean()


async def test_a_backend_killed_mid_job_fails_over_to_another_kind(emu, tmp_path):
    async with (
        fakes(["a1111", "comfyui"], tmp_path) as backends,
        bot_on(emu, backends, tmp_path / "data", admin_user_ids=str(emu.default_user.id)) as (
            bot,
            engine,
        ),
    ):
        ix = await emu.invoke_slash("imagine", {"prompt": "a slow painting --seed 3 --steps 40"})
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and re.search(r"\(\d+%\)", m.content),
            timeout=30, description="a progress edit",
        )  # fmt: skip
        victim = next(i for i, s in enumerate(engine.status()) if s.load)
        backends[victim].kill()
        grid = await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m), timeout=60,
            description="the grid after failover",
        )  # fmt: skip
        status = engine.status()
        assert status[1 - victim].done == 1 and status[victim].total_failures >= 1
        assert not status[victim].in_rotation
        assert [m.id for m in emu.messages() if is_final_grid(m)] == [grid.id]  # posted once
        jobs = await _all_jobs(bot)
        assert len(jobs) == 1 and jobs[0].seed == 3
        lines = (await command(emu, "admin engines", user=emu.default_user)).splitlines()[1:]
        dead, alive = lines[victim], lines[1 - victim]
        assert f"({backends[victim].kind})" in dead and "unhealthy, out of rotation" in dead
        assert f"({backends[1 - victim].kind}): healthy, load 0/1, 1 done" in alive and "s/image" in alive
    emu.assert_clean()


async def test_an_operation_no_backend_can_do_is_refused_without_charge(emu, tmp_path):
    async with (
        fakes(["comfyui"], tmp_path) as backends,
        bot_on(emu, backends, tmp_path / "data") as (bot, engine),
    ):
        ix = await emu.invoke_slash("imagine", {"prompt": "a lighthouse --seed 8"})
        grid = await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and is_final_grid(m),
            timeout=60,
            description="the grid",
        )
        job_id = job_id_of(grid)
        upscale = await click_and_wait(
            emu, grid, f"ib:u:{job_id}:0", lambda m: bool(m.attachments) and "Image #1" in m.content
        )
        single_id = job_id_of(upscale)
        await emu.wait_for(lambda: _all_terminal(bot), timeout=10, what="all jobs to finish")
        used_before = (await bot.quotas.status(emu.default_user.id)).used_seconds
        jobs_before = len(await _all_jobs(bot))
        refused = await emu.click(upscale.id, f"ib:z2:{single_id}")
        assert await refused.wait_for_response(3) == MESSAGE
        answer = emu.get_message(refused.response_message_id)
        assert answer.ephemeral and "cannot do zoom out 2x" in answer.content and "charged" in answer.content
        assert len(await _all_jobs(bot)) == jobs_before
        assert (await bot.quotas.status(emu.default_user.id)).used_seconds == used_before
        vary = await click_and_wait(emu, upscale, f"ib:vs:{single_id}", is_final_grid)  # img2img still works
        assert picture(vary).size == (128, 128)
    emu.assert_clean()
