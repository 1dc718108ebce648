"""Admission and the quota ledger, through the job service with the real tiny engine and SQLite."""

from __future__ import annotations

import dataclasses

import pytest

from bot.prompt import parse_prompt
from bot.quotas import AdmissionRefused, CostModel
from bot.tiers import load_tiers
from storage.models import LedgerKind
from storage.states import JobState
from tests.bot.support import acknowledge, run_until_done, service


def tiers_with(**changes):
    config = load_tiers()
    free = dataclasses.replace(config.tiers["free"], **changes)
    return dataclasses.replace(config, tiers={**config.tiers, "free": free})


async def ledger_kinds(jobs, job_id):
    entries = await jobs.quotas.ledger.entries(job_id=job_id)
    return [(entry.kind, entry.seconds) for entry in entries]


async def test_success_reserves_releases_and_charges_measured_time(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    assert job.mode == "fast" and job.tier == "free" and job.estimate_seconds > 0
    assert await ledger_kinds(jobs, job.id) == [(LedgerKind.RESERVE, job.estimate_seconds)]
    (done,) = await run_until_done(jobs, [job.id])
    assert done.engine_seconds and done.engine_seconds > 0
    kinds = await ledger_kinds(jobs, job.id)
    assert kinds == [
        (LedgerKind.RESERVE, job.estimate_seconds),
        (LedgerKind.RELEASE, -job.estimate_seconds),
        (LedgerKind.CHARGE, round(done.engine_seconds, 3)),
    ]
    status = await jobs.quotas.status(10)
    assert status.used_seconds == pytest.approx(sum(seconds for _, seconds in kinds))
    assert status.used_seconds == pytest.approx(done.engine_seconds, abs=0.001)


async def test_cancel_releases_the_reservation(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    await jobs.cancel(job.id)
    assert [k for k, _ in await ledger_kinds(jobs, job.id)] == [LedgerKind.RESERVE, LedgerKind.RELEASE]
    assert (await jobs.quotas.status(10)).used_seconds == 0


async def test_queue_cap_refuses_with_the_numbers_and_saves_nothing(parts):
    jobs, _ = service(parts, tiers=tiers_with(max_queued=2))
    for _ in range(2):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    acknowledged = []

    async def must_not_acknowledge():
        acknowledged.append(True)
        raise AssertionError("a refused job must not be acknowledged")

    with pytest.raises(AdmissionRefused, match=r"queue is full: 2 of 2"):
        await jobs.submit_imagine(10, must_not_acknowledge, parse_prompt("fox"))
    assert acknowledged == [] and len(await jobs.repo.unfinished()) == 2


async def test_banned_user_is_refused(parts):
    jobs, _ = service(parts)
    await jobs.quotas.users.update(10, banned=True, ban_reason="spam")
    with pytest.raises(AdmissionRefused, match=r"banned.*spam"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))


async def test_tier_limits_on_size_and_steps(parts):
    jobs, _ = service(parts, tiers=tiers_with(max_steps=10, max_resolution=64))
    with pytest.raises(AdmissionRefused, match=r"--steps 20 .* \(10\)"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox --steps 20"))
    with pytest.raises(AdmissionRefused, match=r"larger than your free tier allows"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox --ar 2:1"))


async def test_daily_cap(parts):
    jobs, _ = service(parts, tiers=tiers_with(daily_jobs=1, max_queued=5))
    await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    with pytest.raises(AdmissionRefused, match=r"daily limit"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))


async def test_fast_time_used_up_refuses_or_falls_back_to_relax(parts):
    jobs, _ = service(parts, tiers=tiers_with(fast_seconds=0.0001))
    with pytest.raises(AdmissionRefused, match=r"used your fast time.*resets <t:\d+:R>"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))

    jobs, _ = service(parts, tiers=tiers_with(fast_seconds=0.0001, relax=True))
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    assert job.mode == "relax" and job.estimate_seconds == 0 and "relax" in (job.params.note or "")
    (done,) = await run_until_done(jobs, [job.id])
    assert done.state == JobState.SUCCEEDED and await ledger_kinds(jobs, job.id) == []


async def test_relax_requires_a_tier_that_allows_it(parts):
    jobs, _ = service(parts)
    with pytest.raises(AdmissionRefused, match=r"Relax mode is not part of the free tier"):
        await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"), mode="relax")


async def test_admin_grant_and_reset(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    await run_until_done(jobs, [job.id])
    used = (await jobs.quotas.status(10)).used_seconds
    await jobs.quotas.grant(10, 100, actor_id=1)
    assert (await jobs.quotas.status(10)).used_seconds == pytest.approx(used - 100)
    await jobs.quotas.reset(10, actor_id=1)
    status = await jobs.quotas.status(10)
    assert status.used_seconds == pytest.approx(0) and status.left_seconds == status.tier.fast_seconds


def test_cost_model_learns_the_rate():
    from storage.models import Job

    model = CostModel(initial_rate=1.0, smoothing=0.5)
    job = Job(user_id=1, width=1000, height=1000, steps=10)
    assert model.estimate(job) == 40.0
    model.observe(job, seconds=4.0)  # measured rate 0.1
    assert model.rate == pytest.approx(0.55)
