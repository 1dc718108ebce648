"""Many jobs at once stay within the progress-edit budget: no 429s, spaced edits per message, a bounded total.

Eight users each run one 60-step job at the same time (``ENGINE_BATCH_MAX=8``, pro tier). The budget is set
small (4 progress edits/s for the whole bot, 0.5 s per message) so that eight running jobs must share it:
each job's interval becomes 8 / 4 = 2 s. Progress states are read from each message's history in the
emulator (contents with ``(NN%)``), timed on the emulator's clock.
"""

from __future__ import annotations

import asyncio
import re

from bot.edit_budget import DEFAULT_BURST
from tests.e2e.harness import bot_settings, is_final_grid, running_bot

USERS = 8
RATE = 4.0
MIN_INTERVAL = 0.5
SLACK = 0.15  # request timing jitter between the bot's send and the emulator's record
PROGRESS = re.compile(r"\(\d+%\)")


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_many_running_jobs_share_the_edit_budget(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(
        emu,
        tiny_model_dir,
        tmp_path / "data",
        engine_batch_max=USERS,
        progress_edit_interval=MIN_INTERVAL,
        progress_edits_per_second=RATE,
    )
    users = [emu.default_user] + [emu.add_user(f"budget{i}") for i in range(1, USERS)]
    async with running_bot(settings, emu) as runner:
        assert runner.bot is not None
        for user in users:
            await runner.bot.accounts.update(user.id, tier="pro")

        async def one(index: int) -> int:
            ix = await emu.invoke_slash(
                "imagine", {"prompt": f"budget {index} --steps 60 --seed {index}"}, user=users[index]
            )
            await ix.wait_for_response(3)
            await emu.wait_for(lambda: is_final_grid(emu.get_message(ix.response_message_id)), timeout=60)
            return ix.response_message_id

        message_ids = await asyncio.gather(*(one(i) for i in range(USERS)))
        budget = runner.bot.jobs.presenter.budget  # type: ignore[union-attr]
        assert budget.running == 0  # every finished job gave its share back

    all_progress: list[float] = []
    stretched = 0
    for message_id in message_ids:
        message = emu.get_message(message_id)
        assert is_final_grid(message)  # every job got its final grid
        times = [h["time"] for h in message.history if PROGRESS.search(h["content"] or "")]
        assert times, f"message {message_id} never showed progress"
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= MIN_INTERVAL - SLACK for gap in gaps), gaps
        all_progress += times
        stretched += any(gap >= 1.0 for gap in gaps)
    # the budget was shared: with 4+ jobs running a job's interval is ≥ 1 s instead of 0.5 s
    assert stretched >= USERS // 2
    assert max_in_window(all_progress, 1.0) <= DEFAULT_BURST + RATE * 1.0 + 1
    assert max_in_window(all_progress, 5.0) <= DEFAULT_BURST + RATE * 5.0 + 1
    assert emu.rate_limit_hits == []
    emu.assert_clean()
