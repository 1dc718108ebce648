"""Discord's faults end to end, through real discord.py and the emulator: 5xx answers on message edits and
on the final post, 429s with ``retry_after``, a gateway RECONNECT (the bot RESUMEs) and an INVALID_SESSION
mid-job (the bot IDENTIFYs again). Every job still ends with exactly one grid, later commands and
buttons work, nothing is charged twice, and the emulator records no violation."""

from __future__ import annotations

from collections import defaultdict

import pytest
from sqlmodel import select

from storage.models import LedgerEntry
from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message
from tests.e2e.test_result_workflow import DEFERRED, all_jobs, job_id_of

EDITS = "/messages/"  # progress edits and the final post: PATCHes of the job's message


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_jobs_survive_discord_faults(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot = runner.bot
        bot.scheduler.pause()  # the faults wait for the jobs' edits
        server_errors = [
            emu.force_status(500, method="PATCH", path_contains=EDITS, count=2),
            emu.force_status(502, method="PATCH", path_contains=EDITS, count=1),
        ]
        limited = emu.force_429(method="PATCH", path_contains=EDITS, count=2, retry_after=0.4)
        interactions = []
        for i in range(2):
            ix = await emu.invoke_slash("imagine", {"prompt": f"storm at sea number {i} --steps 4"})
            assert await ix.wait_for_response(3) == DEFERRED
            interactions.append(ix)
        bot.scheduler.resume()

        # mid-job: once the first job shows progress, the gateway is cut twice
        first = interactions[0].response_message_id
        await wait_for_message(emu, lambda m: m.id == first and "%)" in m.content, description="progress")
        await emu.send_reconnect()  # op 7: the bot RESUMEs
        await emu.send_invalid_session()  # op 9: the bot IDENTIFYs a new session

        # an interaction after the new session is answered, and its job runs too
        late = await emu.invoke_slash(
            "imagine", {"prompt": "calm sea after the storm --steps 4"}, user=emu.add_user("late")
        )  # another member: the first one's queue (3 on the free tier) is full
        answer = await late.wait_for_response(3)
        assert answer == DEFERRED, emu.get_message(late.response_message_id).content
        interactions.append(late)
        for ix in interactions:
            await wait_for_message(
                emu, lambda m, ix=ix: m.id == ix.response_message_id and is_final_grid(m), timeout=60
            )
        assert all(fault.hits for fault in server_errors) and len(limited.hits) == 2

        # exactly one grid per job, no stray or duplicated messages
        visible = [m for m in emu.messages() if not m.deleted and not m.ephemeral]
        grids = [m for m in visible if is_final_grid(m)]
        assert sorted(m.id for m in grids) == sorted(ix.response_message_id for ix in interactions)
        assert len({job_id_of(m) for m in grids}) == len(interactions) == len(visible)

        # nothing charged twice: each job reserved, released and was charged exactly once
        await emu.wait_for(lambda: _all_succeeded(bot, len(interactions)), timeout=10, what="SUCCEEDED")
        async with bot.database.sessions() as session:
            entries = (await session.exec(select(LedgerEntry))).all()
        kinds = defaultdict(list)
        for entry in entries:
            kinds[entry.job_id].append(str(entry.kind))
        assert len(kinds) == len(interactions)
        assert all(sorted(k) == ["charge", "release", "reserve"] for k in kinds.values()), kinds

        # 5xx on the final post itself: U1 shows "Waiting", then its only other edit is the result
        bot.scheduler.pause()
        grid = next(m for m in grids if m.id == interactions[0].response_message_id)
        click = await emu.click(grid.id, f"ib:u:{job_id_of(grid)}:0")
        assert await click.wait_for_response(3) == DEFERRED
        await wait_for_message(
            emu, lambda m: m.id == click.response_message_id and "Waiting to start" in m.content
        )
        final_errors = emu.force_status(503, method="PATCH", path_contains=EDITS, count=2)
        bot.scheduler.resume()
        upscale = await wait_for_message(
            emu,
            lambda m: m.id == click.response_message_id and bool(m.attachments) and "Image #1" in m.content,
        )
        assert len(final_errors.hits) == 2 and upscale.custom_ids()
        assert len([m for m in emu.messages() if not m.deleted and not m.ephemeral]) == len(visible) + 1
    emu.assert_clean()


async def _all_succeeded(bot, count: int) -> bool:
    jobs = await all_jobs(bot)
    return len(jobs) == count and all(job.state == "SUCCEEDED" for job in jobs)
