"""Tiers, caps, /info, /cancel and /admin end to end: real discord.py against the emulator."""

from __future__ import annotations

from sqlmodel import col, select

from storage.models import Job, JobTransition, LedgerEntry
from storage.states import JobState
from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message

MESSAGE = 4


async def command(emu, name, options=None, user=None) -> str:
    """Run a slash command that answers privately; return the answer's text."""
    ix = await emu.invoke_slash(name, options or {}, user=user)
    callback = await ix.wait_for_response(3)
    if callback != MESSAGE:  # deferred: wait for the edit
        await emu.wait_for(lambda: not emu.get_message(ix.response_message_id).loading, timeout=15)
    answer = emu.get_message(ix.response_message_id)
    assert answer.ephemeral, f"/{name} answered publicly: {answer.content}"
    return answer.content


async def imagine(emu, prompt, user):
    ix = await emu.invoke_slash("imagine", {"prompt": prompt}, user=user)
    return ix, await ix.wait_for_response(3)


async def rows(bot, model, *where):
    async with bot.database.sessions() as session:
        return list((await session.exec(select(model).where(*where))).all())


async def test_tier_priority_caps_info_cancel_and_admin(emu, tiny_model_dir, tmp_path, database_url):
    admin, basic, pro, free = (emu.add_user(name) for name in ("admin", "bea", "pia", "fred"))
    settings = bot_settings(
        emu, tiny_model_dir, tmp_path / "data", database_url=database_url, admin_user_ids=str(admin.id)
    )
    async with running_bot(settings, emu) as runner:
        bot = runner.bot

        # a member cannot use /admin, and nothing changes
        assert "Only the bot's admins" in await command(emu, "admin pause", user=free)
        assert not bot.scheduler.paused and await bot.audit.recent() == []

        assert "now on the **basic** tier" in await command(
            emu, "admin tier", {"user": basic, "tier": "basic"}, admin
        )
        assert "now on the **pro** tier" in await command(
            emu, "admin tier", {"user": pro, "tier": "pro"}, admin
        )
        assert "Unknown tier" in await command(emu, "admin tier", {"user": pro, "tier": "gold"}, admin)
        assert "paused" in await command(emu, "admin pause", user=admin)

        # while paused: free, basic, pro each queue jobs; free hits its cap of 3
        for user in (free, basic, pro):
            _, callback = await imagine(emu, f"a lighthouse by {user.username}", user)
            assert callback == 5
        for n in range(2):
            await imagine(emu, f"fred extra {n}", free)
        ix, callback = await imagine(emu, "one too many", free)
        assert callback == MESSAGE
        refusal = emu.get_message(ix.response_message_id)
        assert refusal.ephemeral and "queue is full: 3 of 3" in refusal.content
        assert len(await rows(bot, Job, col(Job.user_id) == free.id)) == 3

        # jobs are created right after the acknowledgement; wait until all five are in the queue
        await emu.wait_for(lambda: _count(bot, JobState.QUEUED, 5), timeout=20, what="five queued jobs")
        info = await command(emu, "info", user=free)
        assert "Tier: **free**" in info and "#" in info and "3 of 3" in info
        queue = await command(emu, "admin queue", user=admin)
        assert "5 waiting" in queue and "paused" in queue

        # fred cancels one queued job; its reservation is released
        (extra,) = await rows(bot, Job, col(Job.user_id) == free.id, col(Job.prompt) == "fred extra 1")
        assert "Canceled 1 job" in await command(emu, "cancel", {"job_id": extra.id}, free)
        entries = await rows(bot, LedgerEntry, col(LedgerEntry.job_id) == extra.id)
        assert (
            sorted(e.kind for e in entries) == ["release", "reserve"] and sum(e.seconds for e in entries) == 0
        )

        assert "resumed" in await command(emu, "admin resume", user=admin)
        await emu.wait_for(lambda: _count(bot, JobState.SUCCEEDED, 4), timeout=60, what="four jobs to finish")

        # starts follow tier priority: pro, basic, then free's jobs in order
        started = await rows(bot, JobTransition, col(JobTransition.to_state) == JobState.PROCESSING)
        jobs = {job.id: job for job in await rows(bot, Job)}
        order = [jobs[t.job_id].prompt for t in sorted(started, key=lambda t: t.id)]
        assert order == ["a lighthouse by pia", "a lighthouse by bea", "a lighthouse by fred", "fred extra 0"]

        # every fast job is charged once: reserve, release, charge
        for job in jobs.values():
            kinds = sorted(e.kind for e in await rows(bot, LedgerEntry, col(LedgerEntry.job_id) == job.id))
            assert kinds == (
                ["charge", "release", "reserve"]
                if job.state == JobState.SUCCEEDED
                else ["release", "reserve"]
            )

        stats = await command(emu, "admin stats", user=admin)
        assert "SUCCEEDED 4" in stats and "CANCELED 1" in stats and "p50" in stats

        # a banned member is refused; unbanned, they can draw again
        assert "banned" in await command(emu, "admin ban", {"user": free, "reason": "spam"}, admin)
        ix, callback = await imagine(emu, "let me in", free)
        assert (
            callback == MESSAGE
            and "banned from using this bot (spam)" in emu.get_message(ix.response_message_id).content
        )
        await command(emu, "admin unban", {"user": free}, admin)
        ix, callback = await imagine(emu, "thanks", free)
        assert callback == 5
        await wait_for_message(emu, lambda m: m.id == ix.response_message_id and is_final_grid(m))

        audit = await command(emu, "admin audit", user=admin)
        for action in ("tier", "pause", "resume", "stats", "ban", "unban"):
            assert f" {action} " in audit
    emu.assert_clean()


async def test_fast_and_relax(emu, tiny_model_dir, tmp_path):
    member = emu.add_user("member")
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        assert "not part of the free tier" in await command(emu, "relax", user=member)
        await runner.bot.accounts.update(member.id, tier="standard")
        assert "**relax** mode" in await command(emu, "relax", user=member)
        ix, _ = await imagine(emu, "quiet valley", member)
        grid = await wait_for_message(emu, lambda m: m.id == ix.response_message_id and is_final_grid(m))
        assert grid.content.endswith("(relax)")
        assert "**fast** mode" in await command(emu, "fast", user=member)
    emu.assert_clean()


async def _count(bot, state: JobState, count: int) -> bool:
    return len(await rows(bot, Job, col(Job.state) == state)) >= count
