"""A job the engine's safety checker flags: FAILED with a clear reason, its reservation released, no charge."""

from __future__ import annotations

import asyncio
import logging

from bot.jobs import FLAGGED_REASON
from bot.prompt import parse_prompt
from engine.local import LocalDiffusersEngine
from engine.tiny import build_tiny_safety_checker
from storage.models import LedgerKind
from storage.states import JobState
from tests.bot.support import acknowledge, service


async def test_a_flagged_job_fails_and_costs_nothing(parts, tiny_model_dir, caplog):
    caplog.set_level(logging.DEBUG)
    engine = LocalDiffusersEngine(
        str(tiny_model_dir), "cpu", safety_checker=build_tiny_safety_checker(flag=True)
    )
    await engine.start()
    try:
        jobs, presenter = service(parts, engine=engine)
        job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a secret lighthouse --seed 3"))
        assert job.mode == "fast" and job.estimate_seconds > 0
        # run until the user is told (after the row ended: stopping at the row alone could cut that off)
        jobs.scheduler.start(1, jobs.run)
        try:
            for _ in range(3000):
                if presenter.of(job.id, "failed"):
                    break
                await asyncio.sleep(0.01)
        finally:
            await jobs.scheduler.stop()
    finally:
        await engine.close()
    done = await jobs.repo.get(job.id)
    assert done.state == JobState.FAILED and done.error == FLAGGED_REASON
    assert presenter.of(job.id, "failed") == [FLAGGED_REASON]
    assert presenter.of(job.id, "succeeded") == [] and await jobs.repo.images(job.id) == []
    assert presenter.of(job.id, "progress")  # it ran; the check came after the images were made
    entries = await jobs.quotas.ledger.entries(job_id=job.id)
    assert [e.kind for e in entries] == [LedgerKind.RESERVE, LedgerKind.RELEASE]
    assert sum(e.seconds for e in entries) == 0
    status = await jobs.quotas.status(10)
    assert status.used_seconds == 0 and status.jobs_today == 0  # not counted against the daily cap either
    ours = "\n".join(
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("bot", "engine", "storage")
    )
    assert "safety checker flagged a job" in ours and "FAILED" in ours
    assert "lighthouse" not in ours  # the prompt is never logged


def test_the_bot_passes_engine_safety_checker_to_its_local_engine(monkeypatch):
    from bot.engines import build_engine
    from bot.settings import load_settings

    monkeypatch.setenv("ENGINE_SAFETY_CHECKER", "CompVis/stable-diffusion-safety-checker")
    settings = load_settings(_env_file=None, discord_token="x", model="m", device="cpu")
    engine = build_engine(settings)
    assert isinstance(engine, LocalDiffusersEngine)
    assert engine._safety_source == "CompVis/stable-diffusion-safety-checker"
    monkeypatch.setenv("ENGINE_SAFETY_CHECKER", "off")
    engine = build_engine(load_settings(_env_file=None, discord_token="x", model="m", device="cpu"))
    assert isinstance(engine, LocalDiffusersEngine) and engine._safety_source is None
    monkeypatch.delenv("ENGINE_SAFETY_CHECKER")
    assert load_settings(_env_file=None, discord_token="x").engine_safety_checker == ""
