"""A waiting job's message shows its place in line and an ETA, rewritten as the line moves — at most once
per job per 10 s (on the bot's clock, which the test advances), as low-priority edits of the budget."""

from __future__ import annotations

import re

from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message

DEFERRED = 5


async def test_the_place_in_line_follows_the_queue(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot = runner.bot
        bot.scheduler.pause()
        interactions = []
        for prompt in ("first fox", "second fox", "third fox"):
            ix = await emu.invoke_slash("imagine", {"prompt": prompt})
            assert await ix.wait_for_response(3) == DEFERRED
            interactions.append(ix)
        third = interactions[2].response_message_id
        shown = await wait_for_message(emu, lambda m: m.id == third and "Waiting to start" in m.content)
        assert re.search(r"Waiting to start · 3 in line, ~\d", shown.content), shown.content

        first_job = (await bot.jobs.repo.unfinished())[0]
        await bot.jobs.cancel(first_job.id)
        presenter = bot.jobs.presenter
        edits_before = len(emu.get_message(third).history)
        assert await presenter.refresh_waiting() == 0  # the line moved, but < 10 s since the last edit
        assert len(emu.get_message(third).history) == edits_before

        emu.advance_clock(10)
        moved = await wait_for_message(
            emu, lambda m: m.id == third and "· 2 in line" in m.content, description="the new place"
        )
        assert "third fox" in moved.content
        assert await presenter.refresh_waiting() == 0  # nothing changed since: no edit

        bot.scheduler.resume()
        await wait_for_message(emu, lambda m: m.id == third and is_final_grid(m))
        history = [entry["content"] for entry in emu.get_message(third).history]
        places = [c for c in history if "in line" in c]
        assert [re.search(r"(\d) in line", c)[1] for c in places] == ["3", "2"]
    emu.assert_clean()
