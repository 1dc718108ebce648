"""The bot assembled: discord.py client, database, image store, scheduler, job service and cogs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import discord
from discord.ext import commands
from pydantic import SecretStr

from bot.edit_budget import EditBudget
from bot.intake import Intake, model_aliases
from bot.jobs import JobDefaults, JobService, Timeouts
from bot.moderator import Moderator
from bot.quotas import QuotaService
from bot.results import ResultService
from bot.scheduler import Scheduler
from bot.settings import Settings
from bot.tiers import TierConfig, load_tiers
from engine.base import Engine
from engine.safe_fetch import DEFAULT_POLICY, FetchPolicy
from storage.audit import AuditRepository
from storage.db import Database
from storage.image_store import ImageStore, open_image_store
from storage.jobs import JobRepository
from storage.ledger import LedgerRepository
from storage.models import Mode
from storage.moderation import ModerationRepository
from storage.results import ResultRepository
from storage.stats import StatsRepository
from storage.users import UserRepository

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0
"""Seconds a stopping bot waits for running jobs before leaving them to the next start."""

EXTENSIONS = (
    # any order: the cogs import none of each other (what they share is in cogs/rendering.py)
    "cogs.presenter",
    "cogs.buttons",
    "cogs.imagine",
    "cogs.account",
    "cogs.preferences",
    "cogs.admin",
    "cogs.gallery",  # adds /gallery and its web server only when GALLERY_PORT is set
)


class ImagineBot(commands.Bot):
    """Owns the services; cogs take the bot (``bot: ImagineBot``) and reach them as typed attributes.

    The services that need the database are made in ``setup_hook``, before any cog is loaded.
    """

    database: Database
    accounts: UserRepository
    audit: AuditRepository
    moderator: Moderator
    quotas: QuotaService
    jobs: JobService
    results: ResultService
    stats: StatsRepository
    intake: Intake

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        tiers: TierConfig | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        guild_ready_timeout: float = 2.0,
        watchdog_interval: float = 15.0,
        http_trace: aiohttp.TraceConfig | None = None,
        fetch_policy: FetchPolicy = DEFAULT_POLICY,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channels and roles; no privileged intents needed
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=guild_ready_timeout,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
            # bot/ops_server.py counts Discord requests and 429s through it; an empty one costs nothing
            http_trace=http_trace or aiohttp.TraceConfig(),
        )
        self.settings = settings
        self.engine = engine
        self.tiers = tiers or load_tiers(settings.tiers_file)
        self.now = now
        self.watchdog_interval = watchdog_interval
        # what image links (IMAGE_URLS) and attachments may fetch; tests allow a local server
        self.fetch_policy = fetch_policy
        self._watchdog: asyncio.Task[None] | None = None
        self.scheduler = Scheduler(
            aging_seconds_per_level=settings.aging_seconds,
            max_wait={Mode.RELAX: settings.relax_max_wait},
            clock=lambda: self.now().timestamp(),
        )
        self.edit_budget = EditBudget(
            settings.progress_edits_per_second, min_interval=settings.progress_edit_interval
        )
        """Every edit of an existing message that may wait: progress edits and used-button marks."""
        self.images: ImageStore | None = None
        self.model_aliases = model_aliases(engine)
        self.maintenance: dict[str, Callable[[], Awaitable[object]]] = {}
        """Rounds the watchdog runs besides the time limits, by name (the presenter adds its own:
        moving messages off dying interaction tokens, refreshing places in line)."""
        self._opened = False
        self._close_lock = asyncio.Lock()
        self._shut_down = False

    async def setup_hook(self) -> None:
        self.database = await Database.open(self.settings.resolved_database_url)
        self._opened = True
        self.images = image_store_for(self.settings)
        await self.images.start()  # raises ImageStoreError (e.g. a missing bucket) before anything runs
        self.accounts = UserRepository(self.database)
        self.audit = AuditRepository(self.database)
        self.moderator = Moderator(
            ModerationRepository(self.database),
            self.accounts,
            self.audit,
            self.settings.banned_words,
            now=self.now,
        )
        await self.moderator.load()
        self.quotas = QuotaService(self.accounts, LedgerRepository(self.database), self.tiers, now=self.now)
        store = self.images
        job_repository = JobRepository(self.database, now=self.now)
        self.jobs = JobService(
            job_repository,
            store,
            self.engine,
            self.scheduler,
            JobDefaults(self.settings.model_resolution, self.settings.model_steps, self.settings.model),
            self.quotas,
            timeouts=Timeouts(
                queue=self.settings.queue_timeout,
                processing=self.settings.processing_timeout,
                storing=self.settings.storing_timeout,
            ),
            max_attempts=self.settings.max_attempts,
        )
        self.results = ResultService(ResultRepository(self.database), job_repository, store, now=self.now)
        self.stats = StatsRepository(self.database)
        self.intake = Intake(self.settings, self.moderator, models=self.model_aliases)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        recovered = await self.jobs.recover()
        if recovered:
            log.info("recovered %d unfinished jobs", recovered)
        self.scheduler.start(self.engine.slots, self.jobs.run)
        self._watchdog = asyncio.create_task(self._watch(), name="watchdog")

    async def _watch(self) -> None:
        """Every few seconds: time limits per job state, and messages whose tokens are about to die."""
        while True:
            await asyncio.sleep(self.watchdog_interval)
            try:
                await self.jobs.enforce_timeouts(self.now())
            except Exception:
                log.exception("watchdog round failed")
            for name, work in list(self.maintenance.items()):
                try:
                    await work()
                except Exception:
                    log.exception("watchdog: %s failed", name)

    async def _sync_commands(self) -> None:
        if self.settings.discord_guild_id:
            guild = discord.Object(id=self.settings.discord_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild.id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (they can take up to an hour to appear)", len(synced))

    def is_admin(self, user: discord.abc.User) -> bool:
        """Admins are listed by user id (ADMIN_USER_IDS) or hold a listed role (ADMIN_ROLE_IDS)."""
        if user.id in self.settings.admin_user_ids:
            return True
        roles = getattr(user, "roles", [])
        return any(role.id in self.settings.admin_role_ids for role in roles)

    async def on_ready(self) -> None:
        log.info(
            "connected as %s (%s) to %d guilds", self.user, getattr(self.user, "id", "?"), len(self.guilds)
        )

    async def close(self) -> None:
        """Idempotent: a signal handler and ``async with`` may both call it; the second waits for the first."""
        async with self._close_lock:
            if self._shut_down:
                return
            if self._watchdog is not None:
                self._watchdog.cancel()
                # awaited and dropped: a cancelled task still referenced keeps its database cursor alive
                await asyncio.gather(self._watchdog, return_exceptions=True)
                self._watchdog = None
            await self.scheduler.stop(grace=SHUTDOWN_GRACE)
            await super().close()
            if self._opened:
                await self.database.close()
            if self.images is not None:
                await self.images.close()
            self._shut_down = True


def image_store_for(settings: Settings) -> ImageStore:
    """The store ``IMAGE_STORE`` names, with the S3 settings (not started)."""

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    return open_image_store(
        settings.image_store,
        settings.images_dir,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=secret(settings.aws_access_key_id),
        secret_access_key=secret(settings.aws_secret_access_key),
        region=settings.aws_region,
        public_base_url=settings.image_public_base_url,
        link_seconds=settings.image_link_seconds,
    )
