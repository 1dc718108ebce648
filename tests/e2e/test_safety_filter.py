"""The safety filter end to end: ENGINE_SAFETY_CHECKER on, a flagged /imagine is refused with a clear message,
nothing is posted, nothing is charged."""

from __future__ import annotations

from sqlmodel import col, select

from bot.jobs import FLAGGED_REASON
from engine.tiny import save_tiny_safety_checker
from storage.models import Job, LedgerEntry
from storage.states import JobState
from tests.e2e.harness import bot_settings, running_bot, wait_for_message

DEFERRED = 5


async def test_a_flagged_imagine_is_refused_and_costs_nothing(emu, tiny_model_dir, tmp_path):
    checker = save_tiny_safety_checker(tmp_path / "safety-checker", flag=True)
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", engine_safety_checker=str(checker))
    async with running_bot(settings, emu) as runner:
        ix = await emu.invoke_slash("imagine", {"prompt": "a lighthouse at dusk --seed 7"})
        assert await ix.wait_for_response(3) == DEFERRED
        refused = await wait_for_message(
            emu,
            lambda m: m.id == ix.response_message_id and "safety filter" in m.content,
            description="the refusal",
        )
        user = emu.default_user.id
        assert refused.content == f"**a lighthouse at dusk --seed 7** - <@{user}> — {FLAGGED_REASON}"
        assert "❌" not in refused.content
        assert refused.attachments == [] and refused.custom_ids() == []  # no image, no buttons
        # on the way the user saw the usual progress; the refusal replaced the last preview
        assert any("%)" in entry["content"] for entry in refused.history)

        async with runner.bot.database.sessions() as session:
            (job,) = (await session.exec(select(Job))).all()
            entries = (await session.exec(select(LedgerEntry).where(col(LedgerEntry.job_id) == job.id))).all()
        assert job.state == JobState.FAILED and job.error == FLAGGED_REASON and job.mode == "fast"
        assert sorted(e.kind for e in entries) == ["release", "reserve"]
        assert sum(e.seconds for e in entries) == 0  # the reservation released, no charge
        assert await runner.bot.jobs.repo.images(job.id) == []
    emu.assert_clean()
