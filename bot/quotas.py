"""Admission and quotas: may this user start this job now, in which mode, and what does it cost?

Cost is engine time. A fast job *reserves* an estimate when it is accepted; when it ends the
reservation is *released*, and if it succeeded its measured engine seconds are *charged*. A job that
fails, times out or is canceled costs nothing, even if it ran partway (simple, and in the user's
favour). Relax jobs cost no fast time. The ledger (``storage.ledger``) is append-only, its entries are
written in the same transaction as the job state that implies them, and a user's usage in a period
is the sum of their entries for that period — so after any crash the balance still adds up.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.tiers import Tier, TierConfig
from engine.base import TILE_COUNT
from storage.ledger import LedgerRepository
from storage.models import Job, LedgerEntry, LedgerKind, Mode, User, as_utc
from storage.standing import Standing, read_standing
from storage.states import JobState
from storage.users import UserRepository

WAITING_STATES = (JobState.DRAFT, JobState.SUBMITTED, JobState.QUEUED)
RUNNING_STATES = (JobState.PROCESSING, JobState.GENERATED, JobState.STORING)
UNSUCCESSFUL_STATES = (JobState.FAILED, JobState.CANCELED, JobState.TIMED_OUT)
STARTED_STATES = tuple(state for state in JobState if state not in UNSUCCESSFUL_STATES)
"""What counts against the daily job limit: every job but those that ended without a result."""


class AdmissionRefused(Exception):
    """The job may not start; ``str()`` is the message for the user."""


@dataclass(frozen=True)
class Admission:
    tier: Tier
    mode: str
    estimate_seconds: float
    note: str = ""  # e.g. "Fast time used up: this job runs in relax mode."


@dataclass(frozen=True)
class QuotaStatus:
    tier: Tier
    mode: str
    used_seconds: float
    left_seconds: float
    resets_at: datetime
    jobs_today: int
    waiting: int
    running: int


class CostModel:
    """Estimates engine seconds from pixels x steps x images, learning the rate from finished jobs.

    ``rate`` is seconds per megapixel-step-image; it starts at ``initial_rate`` and follows an
    exponential moving average of measured jobs (so a GPU box and a CPU box both get sane estimates).
    """

    def __init__(self, initial_rate: float = 0.05, smoothing: float = 0.2) -> None:
        self.rate = initial_rate
        self.smoothing = smoothing

    @staticmethod
    def work(job: Job, images: int | None = None) -> float:
        """Megapixel-step-images of a job: its output size x steps x the images it makes (``images_of``)."""
        count = images_of(job) if images is None else images
        return job.width * job.height / 1e6 * max(1, job.steps) * count

    def estimate(self, job: Job, images: int | None = None) -> float:
        """At least a millisecond, so every fast job has a reservation to release."""
        return max(0.001, round(self.rate * self.work(job, images), 3))

    def observe(self, job: Job, seconds: float, images: int | None = None) -> None:
        work = self.work(job, images)
        if work > 0 and seconds > 0:
            self.rate += self.smoothing * (seconds / work - self.rate)


def images_of(job: Job) -> int:
    """How many images a job's operation makes: ``params["n"]`` (1 for an upscale), else a grid of four."""
    return max(1, job.params.n or TILE_COUNT)


class QuotaService:
    def __init__(
        self,
        users: UserRepository,
        ledger: LedgerRepository,
        tiers: TierConfig,
        *,
        cost: CostModel | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.users = users
        self.ledger = ledger
        self.tiers = tiers
        self.cost = cost or CostModel()
        self.now = now
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def lock(self, user_id: int) -> asyncio.Lock:
        """Hold while admitting and creating a job, so two quick submits cannot both slip under a cap."""
        return self._locks[user_id]

    async def admit(
        self, job: Job, requested_mode: str | None, *, uses_engine: bool = True, user_name: str = ""
    ) -> Admission:
        """Decide for a job not yet saved (sizes and steps set). Raises ``AdmissionRefused``.

        Everything it needs of the database is one read (``storage.standing``): it runs under the user's
        lock, where a burst of clicks waits for every admission before it. A user never seen is created
        first (``user_name``: their name, kept from then on).
        """
        now = self.now()
        today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        standing = await self._standing(job.user_id, now, today)
        if standing is None:
            await self.users.get(job.user_id, user_name)
            standing = await self._standing(job.user_id, now, today)
            assert standing is not None, "the user's row was just created"
        user = standing.user
        if user.banned:
            reason = f" ({user.ban_reason})" if user.ban_reason else ""
            raise AdmissionRefused(f"You are banned from using this bot{reason}.")
        if user.blocked_until is not None:
            until = as_utc(user.blocked_until)
            if until > now:
                raise AdmissionRefused(
                    f"You are blocked until <t:{int(until.timestamp())}:t> after repeated prompts against the rules."
                )
        tier = self.tiers.get(user.tier)
        if max(job.width, job.height) > tier.max_resolution:
            raise AdmissionRefused(
                f"{job.width}x{job.height} is larger than your {tier.name} tier allows "
                f"(at most {tier.max_resolution} px per side)."
            )
        if job.steps > tier.max_steps:
            raise AdmissionRefused(
                f"--steps {job.steps} is more than your {tier.name} tier allows ({tier.max_steps})."
            )
        if standing.unfinished_jobs >= tier.max_queued:
            raise AdmissionRefused(
                f"Your queue is full: {standing.unfinished_jobs} of {tier.max_queued} jobs are waiting or running "
                f"({tier.name} tier). Wait for one to finish or /cancel one."
            )
        if standing.jobs_since >= tier.daily_jobs:
            raise AdmissionRefused(
                f"You have started {standing.jobs_since} jobs today, the {tier.name} tier's daily limit. "
                f"It resets <t:{int(today.timestamp()) + 86400}:R>."
            )
        return self._choose_mode(user, tier, job, requested_mode, uses_engine, standing.used_seconds, now)

    async def _standing(self, user_id: int, now: datetime, today: datetime) -> Standing | None:
        return await read_standing(
            self.users.database,
            user_id,
            unfinished=WAITING_STATES + RUNNING_STATES,
            started=STARTED_STATES,
            since=today,
            period_start=self.tiers.period_start(now),
        )

    def _choose_mode(
        self,
        user: User,
        tier: Tier,
        job: Job,
        requested: str | None,
        uses_engine: bool,
        used: float,
        now: datetime,
    ) -> Admission:
        mode = requested or user.mode or Mode.FAST
        if not uses_engine:
            return Admission(tier, mode, 0.0)
        if mode == Mode.RELAX:
            if not tier.relax:
                raise AdmissionRefused(f"Relax mode is not part of the {tier.name} tier; use --fast.")
            return Admission(tier, Mode.RELAX, 0.0)
        estimate = self.cost.estimate(job)
        if used + estimate <= tier.fast_seconds:
            return Admission(tier, Mode.FAST, estimate)
        resets = int(self.tiers.period_end(now).timestamp())
        if tier.relax:
            return Admission(
                tier, Mode.RELAX, 0.0, note="Your fast time is used up: this job runs in relax mode."
            )
        raise AdmissionRefused(
            f"You have used your fast time ({format_duration(used)} of {format_duration(tier.fast_seconds)}). "
            f"It resets <t:{resets}:R>."
        )

    async def _jobs_since(self, user_id: int, since: datetime) -> int:
        return await self.users.count_jobs(user_id, STARTED_STATES, since=since)

    # -- ledger entries written together with job transitions ---------------------------------------

    def reservation(self, job: Job) -> list[LedgerEntry]:
        if job.mode != Mode.FAST or job.estimate_seconds <= 0:
            return []
        return [self._entry(job, LedgerKind.RESERVE, job.estimate_seconds)]

    def settlement(
        self, job: Job, target: JobState, engine_seconds: float | None = None
    ) -> list[LedgerEntry]:
        """Entries to write with the job's terminal transition to ``target``."""
        if not target.terminal or job.mode != Mode.FAST:
            return []
        entries = []
        if job.estimate_seconds > 0:
            entries.append(self._entry(job, LedgerKind.RELEASE, -job.estimate_seconds))
        if target == JobState.SUCCEEDED and engine_seconds:
            entries.append(self._entry(job, LedgerKind.CHARGE, round(engine_seconds, 3)))
        return entries

    def _entry(self, job: Job, kind: str, seconds: float) -> LedgerEntry:
        created = as_utc(job.created_at)
        return LedgerEntry(
            user_id=job.user_id,
            job_id=job.id,
            kind=kind,
            seconds=seconds,
            period_start=self.tiers.period_start(created),
        )

    # -- admin and /info ------------------------------------------------------------------------------

    async def grant(self, user_id: int, seconds: float, actor_id: int) -> None:
        start = self.tiers.period_start(self.now())
        await self.ledger.add(
            [
                LedgerEntry(
                    user_id=user_id,
                    kind=LedgerKind.GRANT,
                    seconds=-seconds,
                    period_start=start,
                    actor_id=actor_id,
                )
            ]
        )

    async def reset(self, user_id: int, actor_id: int) -> float:
        """Bring this period's finished usage back to zero; returns how much was forgiven.

        Reservations of unfinished jobs stay in place: each is released when its job ends (and a success
        is then charged), so resetting never credits a job twice nor makes an in-flight job free.
        """
        start = self.tiers.period_start(self.now())
        used = await self.ledger.used(user_id, start) - await self.ledger.open_reservations(user_id, start)
        if used:
            await self.ledger.add(
                [
                    LedgerEntry(
                        user_id=user_id,
                        kind=LedgerKind.RESET,
                        seconds=-used,
                        period_start=start,
                        actor_id=actor_id,
                    )
                ]
            )
        return used

    async def status(self, user_id: int) -> QuotaStatus:
        user = await self.users.get(user_id)
        tier = self.tiers.get(user.tier)
        now = self.now()
        used = await self.ledger.used(user_id, self.tiers.period_start(now))
        today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return QuotaStatus(
            tier=tier,
            mode=user.mode,
            used_seconds=used,
            left_seconds=max(0.0, tier.fast_seconds - used),
            resets_at=self.tiers.period_end(now),
            jobs_today=await self._jobs_since(user_id, today),
            waiting=await self.users.count_jobs(user_id, WAITING_STATES),
            running=await self.users.count_jobs(user_id, RUNNING_STATES),
        )


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"
