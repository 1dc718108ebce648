"""The walking skeleton's user story, end to end: real discord.py ↔ emulator, tiny diffusers model, SQLite."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from engine.base import GenerationRequest
from sandbox.discord_emulator import DiscordEmulator
from storage.models import Job
from storage.states import JobState
from tests.e2e.harness import InProcessBot, bot_settings, is_final_grid, running_bot, wait_for_message

DEFERRED = 5
MESSAGE = 4


def picture(message, index: int = 0) -> Image.Image:
    image = Image.open(io.BytesIO(message.attachments[index].data))
    image.load()
    return image


def tiles(grid: Image.Image) -> list[Image.Image]:
    w, h = grid.width // 2, grid.height // 2
    return [grid.crop((x, y, x + w, y + h)) for y in (0, h) for x in (0, w)]


def job_id_of(message) -> str:
    return message.custom_ids()[0].split(":")[2]


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


async def click_and_wait(emu: DiscordEmulator, message, custom_id: str, done, user=None):
    ix = await emu.click(message.id, custom_id, user=user)
    assert await ix.wait_for_response(3) == DEFERRED
    return await wait_for_message(
        emu, lambda m: m.id == ix.response_message_id and done(m), description=f"result of {custom_id}"
    )


async def test_imagine_grid_buttons_and_restart(emu, tiny_model_dir, tmp_path, database_url):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", database_url=database_url)
    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        ix = await emu.invoke_slash("imagine", {"prompt": "a red fox in snow --ar 3:2 --seed 42"})
        assert await ix.wait_for_response(3) == DEFERRED
        grid_message = await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m), description="the grid"
        )
        user = emu.default_user.id
        assert grid_message.content == f"**a red fox in snow --ar 3:2 --seed 42** - <@{user}> (fast)"

        # what the user saw on the way: waiting, then percentages with a JPEG preview
        seen = [(entry["content"], entry["attachments"]) for entry in grid_message.history]
        assert any("(Waiting to start)" in content for content, _ in seen)
        progress = [(c, a) for c, a in seen if re.search(r"\(\d{1,3}%\) \(fast\)$", c)]
        assert progress and all(names == ["preview.jpg"] for _, names in progress)

        # the grid: four tiles of 80x56 (3:2 at 64px) made with seeds 42..45
        grid = picture(grid_message)
        assert grid.size == (160, 112)
        job_id = job_id_of(grid_message)
        request = GenerationRequest(prompt="a red fox in snow", width=80, height=56, steps=4, seed=42)
        expected = await bot.engine.generate(request)
        assert all(same_pixels(a, b) for a, b in zip(tiles(grid), expected, strict=True))
        assert grid_message.custom_ids() == [
            *(f"ib:u:{job_id}:{i}" for i in range(4)),
            f"ib:r:{job_id}",
            *(f"ib:v:{job_id}:{i}" for i in range(4)),
        ]

        # U1-U3 (U4 after the restart below): each tile alone, full resolution, the very pixels of its tile
        for index in range(3):
            upscale = await click_and_wait(
                emu,
                grid_message,
                f"ib:u:{job_id}:{index}",
                lambda m, n=index + 1: bool(m.attachments) and f"Image #{n}" in m.content,
            )
            assert same_pixels(picture(upscale), tiles(grid)[index]), f"U{index + 1}"

        # V1: four variations of tile 1, a new grid with its own buttons
        variation = await click_and_wait(emu, grid_message, f"ib:v:{job_id}:0", is_final_grid)
        assert "Variations by" in variation.content
        assert job_id_of(variation) != job_id and picture(variation).size == (160, 112)
        assert any(re.search(r"\(\d+%\)", e["content"]) for e in variation.history)

        # 🔄: same prompt, new seed → a different grid
        reroll = await click_and_wait(emu, grid_message, f"ib:r:{job_id}", is_final_grid)
        assert not same_pixels(picture(reroll), grid)

        # the last result is posted a moment before its row says SUCCEEDED
        await emu.wait_for(lambda: _all_terminal(bot), timeout=10, what="all jobs to finish")
        states = {job.kind: job.state for job in await _all_jobs(bot)}
        assert states == {k: JobState.SUCCEEDED for k in ("imagine", "upscale", "variation", "reroll")}
    finally:
        await runner.stop()

    # a restarted bot still answers the buttons of old messages
    async with running_bot(settings, emu):
        upscale4 = await click_and_wait(
            emu, grid_message, f"ib:u:{job_id}:3", lambda m: bool(m.attachments) and "Image #4" in m.content
        )
        assert same_pixels(picture(upscale4), tiles(grid)[3])

    emu.assert_clean()


async def test_bad_prompt_is_answered_privately_and_queues_nothing(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        ix = await emu.invoke_slash("imagine", {"prompt": "a fox --ar 0:1"})
        assert await ix.wait_for_response(3) == MESSAGE
        answer = emu.get_message(ix.response_message_id)
        assert answer.ephemeral and "--ar" in answer.content
        assert await _all_jobs(runner.bot) == []
    emu.assert_clean()


async def test_only_the_owner_or_an_admin_may_click(emu, tiny_model_dir, tmp_path):
    admin = emu.add_user("admin")
    mallory = emu.add_user("mallory")
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", admin_user_ids=str(admin.id))
    async with running_bot(settings, emu) as runner:
        ix = await emu.invoke_slash("imagine", {"prompt": "lighthouse --seed 1"})
        grid_message = await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m)
        )
        job_id = job_id_of(grid_message)

        refused = await emu.click(grid_message.id, f"ib:v:{job_id}:0", user=mallory)
        assert await refused.wait_for_response(3) == MESSAGE
        answer = emu.get_message(refused.response_message_id)
        assert answer.ephemeral and "not your job" in answer.content
        assert len(await _all_jobs(runner.bot)) == 1

        await click_and_wait(
            emu,
            grid_message,
            f"ib:u:{job_id}:0",
            lambda m: "Image #1" in m.content and bool(m.attachments),
            admin,
        )
        assert len(await _all_jobs(runner.bot)) == 2
    emu.assert_clean()


async def test_survives_a_429_on_an_edit(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu):
        emu.force_429(method="PATCH", path_contains="/messages/", count=2, retry_after=0.3)
        ix = await emu.invoke_slash("imagine", {"prompt": "storm at sea --steps 8"})
        grid_message = await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m)
        )
        assert picture(grid_message).size == (128, 128)
        assert any(r.status == 429 for r in emu.requests)
    emu.assert_clean()


async def _all_jobs(bot) -> list[Job]:
    from sqlmodel import select

    async with bot.database.sessions() as session:
        return list((await session.exec(select(Job))).all())


async def _all_terminal(bot) -> bool:
    return all(JobState(job.state).terminal for job in await _all_jobs(bot))
