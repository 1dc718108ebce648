"""Long queues: a message moves off its interaction token before it dies, and queue time limits end jobs."""

from __future__ import annotations

from sqlmodel import select

from storage.models import Job, LedgerEntry
from storage.states import JobState
from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message


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
