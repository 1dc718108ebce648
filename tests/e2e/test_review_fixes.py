"""Defects found in review (issue 15) that live where the bot meets Discord, end to end through the emulator."""

from __future__ import annotations

import asyncio

import pytest

from bot.intake import LINKS_OFF
from bot.moderation import moderation_message
from cogs.imagine import ALREADY_ANSWERED
from storage.states import JobState
from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message
from tests.e2e.test_prompt_language import png_bytes

MESSAGE, DEFERRED = 4, 5


async def test_the_watchdog_leaves_alone_a_job_whose_result_was_just_posted(emu, tiny_model_dir, tmp_path):
    """Item 1: the long-wait watchdog read its list of unfinished jobs while the job ran; by the time it
    gets to the job, the result is posted. It must re-read the job and leave the grid where it is."""
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot = runner.bot
        bot.scheduler.pause()
        ix = await emu.invoke_slash("imagine", {"prompt": "a fox just in time"})
        await ix.wait_for_response(3)
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and "Waiting to start" in m.content
        )

        async def no_time_limits(now):
            return []

        bot.jobs.enforce_timeouts = no_time_limits  # only the message mover is under test
        succeeded = asyncio.Event()
        transition = bot.jobs.repo.transition

        async def watched_transition(job_id, target, **kwargs):
            row = await transition(job_id, target, **kwargs)
            if target == JobState.SUCCEEDED:
                succeeded.set()
            return row

        bot.jobs.repo.transition = watched_transition
        unfinished = bot.jobs.repo.unfinished
        stale_rounds: list[int] = []

        async def slow_round(user_id=None):
            rows = await unfinished(user_id)
            if rows and not stale_rounds:  # this round's list: read while the job still runs
                stale_rounds.append(len(rows))
                await succeeded.wait()  # ...and the round gets to it only once the result is posted,
                emu.advance_clock(13.5 * 60)  # when the token has 90 seconds left
            return rows

        bot.jobs.repo.unfinished = slow_round
        move = bot.maintenance["move aging messages"]  # what the watchdog calls each round (the presenter's)
        rounds_after: list[int] = []

        async def counted_move():
            moved = await move()
            if succeeded.is_set():
                rounds_after.append(moved)
            return moved

        bot.maintenance["move aging messages"] = counted_move
        bot.scheduler.resume()
        await emu.wait_for(
            lambda: len(rounds_after) >= 2, timeout=180, what="two watchdog rounds after the result"
        )

        assert stale_rounds == [1] and rounds_after[0] == 0
        grid = emu.get_message(ix.response_message_id)
        assert is_final_grid(grid) and grid.attachments and not grid.deleted
        visible = [m for m in emu.messages() if not m.deleted and not m.ephemeral]
        assert [m.id for m in visible] == [grid.id]
        job = await bot.jobs.repo.get(_job_id(grid))
        assert job.state == JobState.SUCCEEDED and job.message_id == grid.id
    emu.assert_clean()


def _job_id(message) -> str:
    return message.custom_ids()[0].split(":")[2]


async def test_a_link_in_any_permutation_is_refused_and_never_echoed(emu, tiny_model_dir, tmp_path):
    """Item 16: with IMAGE_URLS off, a link in the second permutation is refused like one in the first,
    privately, and no public message ever shows it; links are moderated like the rest of the prompt."""
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", banned_words="gore")
    async with running_bot(settings, emu) as runner:
        ix = await emu.invoke_slash("imagine", {"prompt": "{cat, https://example.com/x.png dog}"})
        assert await ix.wait_for_response(3) == MESSAGE
        answer = emu.get_message(ix.response_message_id)
        assert answer.ephemeral and answer.content == LINKS_OFF

        ix = await emu.invoke_slash("imagine", {"prompt": "https://example.com/gore.png a cat"})
        assert await ix.wait_for_response(3) == MESSAGE
        answer = emu.get_message(ix.response_message_id)
        assert answer.ephemeral and answer.content == moderation_message()

        assert await runner.bot.jobs.repo.unfinished() == []
        assert all("example.com" not in m.content for m in emu.messages() if not m.ephemeral)
    emu.assert_clean()


async def test_a_double_click_on_yes_starts_the_jobs_once_and_disables_the_buttons(
    emu, tiny_model_dir, tmp_path
):
    """Item 8: the permutation confirmation runs once; a racing second click is told so; buttons disabled."""
    member = emu.add_user("member")
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot = runner.bot
        bot.scheduler.pause()  # the jobs only need to be created
        await bot.accounts.update(member.id, tier="pro")
        big = await emu.invoke_slash(
            "imagine", {"prompt": "a {red, green, blue} owl --repeat 2"}, user=member
        )
        assert await big.wait_for_response(3) == MESSAGE
        question = emu.get_message(big.response_message_id)
        yes = question.custom_ids()[0]
        first = await emu.click(question.id, yes, user=member)
        second = await emu.click(question.id, yes, user=member)  # before the first is answered
        answers = sorted([await first.wait_for_response(3), await second.wait_for_response(3)])
        assert answers == [MESSAGE, DEFERRED]  # one starts the jobs, the other is told privately
        told = next(ix for ix in (first, second) if ix.responses[0] == MESSAGE)
        assert emu.get_message(told.response_message_id).content == ALREADY_ANSWERED

        await emu.wait_for(
            lambda: all(c.get("disabled") for c in _buttons(emu.get_message(question.id))),
            timeout=10,
            what="disabled buttons",
        )
        with pytest.raises(ValueError, match="disabled"):
            await emu.click(question.id, yes, user=member)
        assert len(await bot.jobs.repo.unfinished(member.id)) == 6
    emu.assert_clean()


def _buttons(message) -> list[dict]:
    return [c for row in message.components for c in row.get("components", [])]


async def test_a_refused_user_s_image_is_never_fetched_nor_stored(emu, tiny_model_dir, tmp_path):
    """Item 14: admission comes before the download: a banned user's attachment is not fetched or kept."""
    data_dir = tmp_path / "data"
    async with running_bot(bot_settings(emu, tiny_model_dir, data_dir), emu) as runner:
        await runner.bot.accounts.get(emu.default_user.id)
        await runner.bot.accounts.update(emu.default_user.id, banned=True, ban_reason="spam")
        ix = await emu.invoke_slash(
            "imagine", {"prompt": "make it blue"}, attachments={"image": ("big.png", png_bytes())}
        )
        assert await ix.wait_for_response(3) == MESSAGE  # answered privately, not deferred
        answer = emu.get_message(ix.response_message_id)
        assert answer.ephemeral and "banned" in answer.content
        assert [r.path for r in emu.requests if "/attachments/" in r.path] == []
        images = data_dir / "images"
        assert not images.exists() or [p for p in images.rglob("*") if p.is_file()] == []
        assert await runner.bot.jobs.repo.unfinished() == []
    emu.assert_clean()
