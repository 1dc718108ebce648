"""A used-button mark is written with the button's job before the edit is sent, so a bot killed before
sending it makes the edit at its next start (real discord.py against the emulator, the tiny model)."""

from __future__ import annotations

from tests.e2e.harness import InProcessBot, bot_settings, wait_for_message
from tests.e2e.test_result_workflow import DEFERRED, PRIMARY, SECONDARY, all_jobs, grid_of, job_id_of, styles


async def test_a_mark_left_by_a_killed_bot_is_made_at_the_next_start(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data")
    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        grid = await grid_of(emu, "lighthouse at dusk --seed 3")
        grid_id = job_id_of(grid)
        cog = bot.get_cog("ResultsCog")
        cog.marker.delay = 3600.0  # the mark waits: the "kill" below comes first

        async def killed(timeout: float = 0.0) -> None:  # a SIGKILL flushes nothing
            for task in list(cog.marker._tasks.values()):
                task.cancel()

        cog.marker.close = killed
        ix = await emu.click(grid.id, f"ib:u:{grid_id}:1")
        assert await ix.wait_for_response(3) == DEFERRED
        await wait_for_message(emu, lambda m: m.id == ix.response_message_id and bool(m.attachments))
        (upscale,) = [job for job in await all_jobs(bot) if job.kind == "upscale"]
        assert upscale.params.mark_message == (grid.channel_id, grid.id)  # recorded before any edit
    finally:
        await runner.stop()
    assert styles(emu.get_message(grid.id))[f"ib:u:{grid_id}:1"] == SECONDARY  # never sent

    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        await emu.wait_for(
            lambda: styles(emu.get_message(grid.id))[f"ib:u:{grid_id}:1"] == PRIMARY,
            timeout=15,
            what="the mark made after the restart",
        )
        await emu.wait_for(lambda: _marks_cleared(bot), timeout=5, what="the mark forgotten")
    finally:
        await runner.stop()
    emu.assert_clean()


async def _marks_cleared(bot) -> bool:
    return all(job.params.mark_message is None for job in await all_jobs(bot))
