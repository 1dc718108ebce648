"""Long queues: a message moves off its interaction token before it dies, and queue time limits end jobs."""

from __future__ import annotations

import pytest
from sqlmodel import select

from storage.models import Job, LedgerEntry
from storage.states import JobState
from tests.e2e.harness import InProcessBot, bot_settings, is_final_grid, running_bot, wait_for_message
from tests.e2e.test_crash_windows import Freeze, kill, visible


async def job_rows(bot):
    async with bot.database.sessions() as session:
        return list((await session.exec(select(Job))).all())


async def test_a_job_waiting_15_minutes_moves_to_a_channel_message(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot = runner.bot
        bot.scheduler.pause()
        ix = await emu.invoke_slash("imagine", {"prompt": "a very patient fox"})
        assert await ix.wait_for_response(3) == 5
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and "Waiting to start" in m.content
        )

        emu.advance_clock(13.5 * 60)  # the token has 90 seconds left
        moved = await wait_for_message(
            emu,
            lambda m: m.id != ix.response_message_id and not m.deleted and "Waiting to start" in m.content,
            description="the job's new channel message",
        )
        await emu.wait_for(
            lambda: emu.get_message(ix.response_message_id).deleted, timeout=5, what="deletion"
        )
        (job,) = await job_rows(bot)
        assert job.message_id == moved.id and job.interaction_token is None

        emu.advance_clock(10 * 60)  # the old token is dead now; nothing may use it
        bot.scheduler.resume()
        grid = await wait_for_message(emu, lambda m: m.id == moved.id and is_final_grid(m))
        assert "a very patient fox" in grid.content
        visible = [m for m in emu.messages() if not m.deleted and not m.ephemeral]
        assert [m.id for m in visible] == [moved.id]
    emu.assert_clean()


async def test_queue_time_limit_ends_the_job_and_releases_its_reservation(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", queue_timeout=60)
    async with running_bot(settings, emu) as runner:
        bot = runner.bot
        bot.scheduler.pause()
        ix = await emu.invoke_slash("imagine", {"prompt": "a fox stuck in line"})
        await ix.wait_for_response(3)
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and "Waiting to start" in m.content
        )
        emu.advance_clock(61)
        message = await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and "Timed out" in m.content,
            description="the timeout",
        )
        assert "more than 1m 00s waiting in the queue" in message.content
        (job,) = await job_rows(bot)
        assert job.state == JobState.TIMED_OUT
        async with bot.database.sessions() as session:
            entries = (await session.exec(select(LedgerEntry))).all()
        assert (
            sorted(e.kind for e in entries) == ["release", "reserve"] and sum(e.seconds for e in entries) == 0
        )
        bot.scheduler.resume()
        assert bot.scheduler.waiting == 0
    emu.assert_clean()


@pytest.mark.parametrize("point", ["posted", "recorded", "deleted"])
async def test_a_move_killed_at_any_point_leaves_one_message(emu, tiny_model_dir, tmp_path, point):
    """The bot is killed right after posting the job's new channel message, after recording it, or after
    deleting the old one: the next start finishes the move, and the user ends with one message."""
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data")
    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    bot.scheduler.pause()
    ix = await emu.invoke_slash("imagine", {"prompt": "a fox moved mid-crash"})
    assert await ix.wait_for_response(3) == 5
    await wait_for_message(emu, lambda m: m.id == ix.response_message_id and "Waiting to start" in m.content)
    freeze = Freeze()
    repo = bot.jobs.repo
    post, update_fields = bot.jobs.presenter._post_once, repo.update_fields

    async def posted_then_frozen(*args, **kwargs):
        made = await post(*args, **kwargs)
        if point == "posted":
            await freeze.here()
        return made

    async def frozen_after_a_step(job_id, **fields):
        await update_fields(job_id, **fields)
        recorded = fields.get("interaction_token", ...) is None
        deleted = "params" in fields and fields["params"].replaced_message is None
        if (point == "recorded" and recorded) or (point == "deleted" and deleted):
            await freeze.here()

    bot.jobs.presenter._post_once = posted_then_frozen
    repo.update_fields = frozen_after_a_step
    emu.advance_clock(13.5 * 60)  # the token has 90 seconds left: the watchdog moves the message
    await kill(runner, freeze)
    assert len(visible(emu)) == (1 if point == "deleted" else 2)

    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        (job,) = await job_rows(bot)
        grid = await wait_for_message(
            emu, lambda m: is_final_grid(m) and "a fox moved mid-crash" in m.content
        )
        await emu.wait_for(
            lambda: emu.get_message(ix.response_message_id).deleted, timeout=10, what="deletion"
        )
        (job,) = await job_rows(bot)
        assert job.message_id == grid.id and job.params.replaced_message is None
    finally:
        await runner.stop()
    assert visible(emu) == [grid.id]
    emu.assert_clean()
