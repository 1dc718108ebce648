"""Quota-ledger defects found in review (issue 15, items 10–13), through the job service with the tiny engine."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from bot.jobs import JobDefaults, JobService
from bot.prompt import parse_prompt
from bot.quotas import CostModel, QuotaService
from bot.scheduler import Scheduler
from bot.tiers import load_tiers
from engine.base import Operation
from storage.jobs import JobRepository
from storage.ledger import LedgerRepository
from storage.models import Job, JobKind, LedgerKind
from storage.params import JobParams
from storage.states import JobState
from storage.users import UserRepository
from tests.bot.support import RecordingPresenter, acknowledge, run_until_done, service


async def test_a_reset_leaves_open_reservations_in_place(parts):
    """Item 10: resetting while a job waits must not credit its reservation twice."""
    jobs, _ = service(parts)
    done = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    await run_until_done(jobs, [done.id], timeout=180)
    waiting = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    assert (await jobs.quotas.status(10)).used_seconds > waiting.estimate_seconds  # a charge + a reservation

    forgiven = await jobs.quotas.reset(10, actor_id=1)
    status = await jobs.quotas.status(10)
    assert status.used_seconds == pytest.approx(waiting.estimate_seconds)  # only the open reservation
    assert forgiven == pytest.approx((await jobs.repo.get(done.id)).engine_seconds, abs=0.001)

    await jobs.cancel(waiting.id)  # its release brings usage to zero, not below
    assert (await jobs.quotas.status(10)).used_seconds == pytest.approx(0)


async def test_reservation_release_and_charge_share_the_period_the_job_was_accepted_in(parts):
    """Item 11: with an injected clock, every entry of a job is in the clock's period (not the real one)."""
    engine, database, store = parts
    clock = datetime(2020, 1, 31, 23, 59, tzinfo=UTC)
    tiers = load_tiers()
    quotas = QuotaService(UserRepository(database), LedgerRepository(database), tiers, now=lambda: clock)
    jobs = JobService(
        JobRepository(database, now=lambda: clock),
        store,
        engine,
        Scheduler(clock=lambda: 0.0),
        JobDefaults(resolution=64, steps=3, model="tiny"),
        quotas,
        rng=random.Random(5),
    )
    jobs.presenter = RecordingPresenter()
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox"))
    await run_until_done(jobs, [job.id], timeout=180)
    entries = await quotas.ledger.entries(job_id=job.id)
    assert [e.kind for e in entries] == [LedgerKind.RESERVE, LedgerKind.RELEASE, LedgerKind.CHARGE]
    assert {e.period_start.replace(tzinfo=UTC) for e in entries} == {tiers.period_start(clock)}
    assert (await quotas.status(10)).used_seconds == pytest.approx(entries[-1].seconds)


def test_the_estimate_counts_the_images_the_operation_makes():
    """Item 12: an upscale makes one image and reserves a quarter of a grid of the same size."""
    model = CostModel(initial_rate=1.0)
    grid = Job(user_id=1, width=1000, height=1000, steps=10)
    upscale = Job(user_id=1, width=1000, height=1000, steps=10, params=JobParams(n=1))
    assert model.estimate(grid) == 40.0
    assert model.estimate(upscale) == 10.0


async def test_an_upscale_reserves_its_own_size_and_one_image(parts):
    """Item 12, through the service: the reservation of Upscale (Subtle) is for one 2x image."""
    jobs, _ = service(parts)
    parent = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox --seed 1"))
    (parent,) = await run_until_done(jobs, [parent.id], timeout=180)
    child = await jobs.submit_child(
        parent, JobKind.ENHANCE, 0, 10, acknowledge, operation=Operation.UPSCALE_SUBTLE
    )
    rate = jobs.quotas.cost.rate
    assert (child.width, child.height) == (2 * parent.width, 2 * parent.height)
    one_image = round(rate * child.width * child.height / 1e6 * child.steps * 1, 3)
    assert child.estimate_seconds == pytest.approx(max(0.001, one_image))
    entries = await jobs.quotas.ledger.entries(job_id=child.id)
    assert [(e.kind, e.seconds) for e in entries] == [(LedgerKind.RESERVE, child.estimate_seconds)]


async def test_a_button_job_uses_the_clickers_mode_and_tier(parts):
    """Item 13: a free-tier clicker (no relax) on a relax parent runs fast; a relax clicker is not charged."""
    jobs, _ = service(parts)
    await jobs.quotas.users.get(10)
    await jobs.quotas.users.update(10, tier="standard")
    parent = await jobs.submit_imagine(10, acknowledge, parse_prompt("fox --seed 1"), mode="relax")
    assert parent.mode == "relax"
    (parent,) = await run_until_done(jobs, [parent.id], timeout=180)

    await jobs.quotas.users.get(20)  # free tier, fast
    child = await jobs.submit_child(parent, JobKind.VARIATION, 0, 20, acknowledge)
    assert (child.mode, child.tier) == ("fast", "free") and child.estimate_seconds > 0

    await jobs.quotas.users.get(30)
    await jobs.quotas.users.update(30, tier="standard", mode="relax")
    fast_parent = await jobs.submit_imagine(20, acknowledge, parse_prompt("fox --seed 2"))
    fast_parent, _ = await run_until_done(jobs, [fast_parent.id, child.id], timeout=180)
    relaxed = await jobs.submit_child(fast_parent, JobKind.VARIATION, 1, 30, acknowledge)
    assert (relaxed.mode, relaxed.tier, relaxed.estimate_seconds) == ("relax", "standard", 0.0)
    assert await jobs.quotas.ledger.entries(job_id=relaxed.id) == []
    assert JobState(relaxed.state) == JobState.QUEUED
