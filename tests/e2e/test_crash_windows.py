"""A bot stopped dead between two steps that talk to Discord loses nothing and leaves one message.

The "kill" freezes the bot's task at the chosen point (it never returns and writes nothing more), then
the bot is stopped and a new one started on the same database, as after a SIGKILL. Real discord.py
against the emulator, the tiny model.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select

from storage.models import Job, LedgerEntry
from storage.states import JobState
from tests.e2e.harness import InProcessBot, bot_settings, is_final_grid, wait_for_message

DEFERRED = 5
PRIVATE_ANSWER = 4


class Freeze:
    """A point where the bot's task stops as a killed process would: it never returns. ``release()``
    cancels the frozen tasks, which (like a dead process) makes them write nothing more."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._frozen: list[asyncio.Task[object]] = []

    async def here(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._frozen.append(task)
        self.reached.set()
        await asyncio.Event().wait()

    def release(self) -> None:
        for task in self._frozen:
            task.cancel()


async def rows(bot, model):
    async with bot.database.sessions() as session:
        return list((await session.exec(select(model))).all())


def visible(emu):
    return [m.id for m in emu.messages() if not m.deleted and not m.ephemeral]


async def kill(runner: InProcessBot, freeze: Freeze) -> None:
    await asyncio.wait_for(freeze.reached.wait(), 30)
    freeze.release()
    await runner.stop()


async def test_killed_after_thinking_before_the_message_id_is_saved(emu, tiny_model_dir, tmp_path):
    """The job row is written before "thinking…"; the restarted bot finds that message by its token."""
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data")
    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    freeze = Freeze()
    transition = bot.jobs.repo.transition

    async def frozen_before_submitted(job_id, target, **fields):
        if target == JobState.SUBMITTED:
            await freeze.here()
        return await transition(job_id, target, **fields)

    bot.jobs.repo.transition = frozen_before_submitted
    ix = await emu.invoke_slash("imagine", {"prompt": "a fox saved before it was acknowledged --seed 4"})
    assert await ix.wait_for_response(3) == DEFERRED
    await asyncio.wait_for(freeze.reached.wait(), 30)
    (job,) = await rows(bot, Job)
    assert (job.state, job.message_id, job.interaction_token) == (JobState.DRAFT, None, ix.token)
    await kill(runner, freeze)

    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m), timeout=60, description="grid"
        )
        await emu.wait_for(lambda: _ended(bot), timeout=10, what="the job to end")
        (job,) = await rows(bot, Job)
        assert (job.state, job.message_id) == (JobState.SUCCEEDED, ix.response_message_id)
        assert [entry.kind for entry in await rows(bot, LedgerEntry)].count("charge") == 1
    finally:
        await runner.stop()
    assert visible(emu) == [ix.response_message_id]
    emu.assert_clean()


@pytest.mark.emulator_allows(unanswered="the bot is killed before it answers the command, on purpose")
async def test_killed_before_thinking_the_job_still_runs_in_a_channel_message(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data")
    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    freeze = Freeze()
    create = bot.jobs.repo.create

    async def frozen_after_create(job, *args, **kwargs):
        made = await create(job, *args, **kwargs)
        await freeze.here()
        return made

    bot.jobs.repo.create = frozen_after_create
    ix = await emu.invoke_slash("imagine", {"prompt": "a fox nobody answered --seed 6"})
    await kill(runner, freeze)
    assert not ix.responses  # Discord tells the user "the application did not respond"

    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        grid = await wait_for_message(
            emu,
            lambda m: is_final_grid(m) and "a fox nobody answered" in m.content,
            timeout=60,
            description="grid",
        )
        await emu.wait_for(lambda: _ended(bot), timeout=10, what="the job to end")
        (job,) = await rows(bot, Job)
        assert (job.state, job.message_id) == (JobState.SUCCEEDED, grid.id)
    finally:
        await runner.stop()
    assert visible(emu) == [grid.id]


async def test_a_refused_acknowledgement_ends_the_saved_job_uncharged(emu, tiny_model_dir, tmp_path):
    """Discord refuses the "thinking…" (a 404 on the callback): the saved job ends FAILED, reservation
    released, and the user gets a private answer instead."""
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data")
    runner = InProcessBot(settings)
    bot = await runner.start(emu)
    try:
        bot.scheduler.pause()
        emu.force_status(404, method="POST", path_contains="/callback", count=1)  # "Unknown interaction"
        ix = await emu.invoke_slash("imagine", {"prompt": "a fox Discord never saw --seed 7"})
        assert await ix.wait_for_response(3) == PRIVATE_ANSWER  # after the refused "thinking…"
        (job,) = await rows(bot, Job)
        assert job.state == JobState.FAILED
        ledger = await rows(bot, LedgerEntry)
        assert sorted(str(entry.kind) for entry in ledger) == ["release", "reserve"]
        assert sum(entry.seconds for entry in ledger) == pytest.approx(0)
        assert not bot.scheduler.waiting
        assert "could not be queued" in emu.get_message(ix.response_message_id).content
    finally:
        await runner.stop()


async def _ended(bot) -> bool:
    return not await bot.jobs.repo.unfinished()
