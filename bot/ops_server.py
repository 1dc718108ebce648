"""``/healthz`` and ``/metrics`` on ``HTTP_PORT`` (off unless set; ``HTTP_HOST`` defaults to loopback).

``/healthz`` answers 200 only when this process is ready to serve users: connected to Discord, the
database answers, and at least one engine is healthy; else 503, with each check in the JSON body (a
standby process says ``"role": "standby"``). ``/metrics`` is Prometheus text (``prometheus-client``):
jobs by state and tier, the queue's length and its oldest wait, Discord requests and 429 answers, engine
seconds, and quota seconds charged. Database figures are read at scrape time (so every process of a
pair reports the same truth); request counters are this process's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import func, select, text
from sqlmodel import col

from storage.models import Job, LedgerEntry, LedgerKind
from storage.states import JobState

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from engine.base import Engine

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0


class Metrics:
    """This process's Prometheus registry (its own, so several bots in one test process don't clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge(
            "imaginebot_jobs", "Jobs by state and tier", ["state", "tier"], registry=self.registry
        )
        self.queue_length = Gauge(
            "imaginebot_queue_length", "Jobs waiting for an engine", registry=self.registry
        )
        self.queue_oldest_wait = Gauge(
            "imaginebot_queue_oldest_wait_seconds",
            "How long the longest-waiting queued job has waited",
            registry=self.registry,
        )
        self.engine_seconds = Gauge(
            "imaginebot_engine_seconds_total",
            "Engine seconds of succeeded jobs, by engine",
            ["engine"],
            registry=self.registry,
        )
        self.quota_charged = Gauge(
            "imaginebot_quota_charged_seconds_total", "Fast seconds charged to users", registry=self.registry
        )
        self.discord_requests = Counter(
            "imaginebot_discord_requests",
            "Discord HTTP requests, by status",
            ["status"],
            registry=self.registry,
        )
        self.discord_rate_limited = Counter(
            "imaginebot_discord_rate_limited", "Discord HTTP 429 answers", registry=self.registry
        )
        self.active = Gauge(
            "imaginebot_active",
            "1 when this process is the active bot (holds the lease), 0 on standby",
            registry=self.registry,
        )

    def discord_trace(self) -> aiohttp.TraceConfig:
        """Counts discord.py's HTTP requests (pass as ``http_trace`` to the client)."""
        trace = aiohttp.TraceConfig()

        async def on_end(_session: Any, _context: Any, params: aiohttp.TraceRequestEndParams) -> None:
            self.discord_requests.labels(str(params.response.status)).inc()
            if params.response.status == 429:
                self.discord_rate_limited.inc()

        trace.on_request_end.append(on_end)
        return trace

    async def refresh(self, bot: ImagineBot) -> None:
        """Read the database's figures into the gauges."""
        assert bot.database is not None
        async with bot.database.engine.connect() as connection:
            by_state = (
                await connection.execute(
                    select(col(Job.state), col(Job.tier), func.count()).group_by(
                        col(Job.state), col(Job.tier)
                    )
                )
            ).all()
            engines = (
                await connection.execute(
                    select(col(Job.engine), func.coalesce(func.sum(col(Job.engine_seconds)), 0.0))
                    .where(col(Job.state) == JobState.SUCCEEDED)
                    .group_by(col(Job.engine))
                )
            ).all()
            charged = (
                await connection.execute(
                    select(func.coalesce(func.sum(col(LedgerEntry.seconds)), 0.0)).where(
                        col(LedgerEntry.kind) == LedgerKind.CHARGE
                    )
                )
            ).scalar_one()
            oldest = (
                await connection.execute(
                    select(func.min(col(Job.state_since))).where(col(Job.state) == JobState.QUEUED)
                )
            ).scalar_one()
        self.jobs.clear()
        for state, tier, count in by_state:
            self.jobs.labels(str(state), tier or "").set(count)
        self.engine_seconds.clear()
        for engine, seconds in engines:
            self.engine_seconds.labels(engine or "").set(float(seconds or 0.0))
        self.quota_charged.set(float(charged))
        self.queue_length.set(bot.scheduler.waiting)
        if oldest is None:
            self.queue_oldest_wait.set(0)
        else:
            since = oldest if oldest.tzinfo else oldest.replace(tzinfo=bot.now().tzinfo)
            self.queue_oldest_wait.set(max(0.0, (bot.now() - since).total_seconds()))


class OpsServer:
    """The HTTP server; ``bot`` is attached once this process is active (a standby has none)."""

    def __init__(self, engine: Engine, metrics: Metrics, host: str, port: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self.host, self.port = host, port
        self.bot: ImagineBot | None = None
        self._runner: web.AppRunner | None = None
        self.started = time.monotonic()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def checks(self) -> dict[str, Any]:
        bot = self.bot
        if bot is None:
            return {"role": "standby", "discord": False, "database": False, "engine": await self._engine_ok()}
        discord_ok = bot.is_ready() and not bot.is_closed()
        return {
            "role": "active",
            "discord": discord_ok,
            "database": await self._database_ok(bot),
            "engine": await self._engine_ok(),
        }

    async def healthz(self, _request: web.Request) -> web.Response:
        checks = await self.checks()
        ready = all(checks[name] for name in ("discord", "database", "engine"))
        return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)

    async def metrics_page(self, _request: web.Request) -> web.Response:
        self.metrics.active.set(1 if self.bot is not None else 0)
        if self.bot is not None and self.bot.database is not None:
            try:
                await asyncio.wait_for(self.metrics.refresh(self.bot), CHECK_TIMEOUT)
            except Exception as error:  # a scrape still answers (counters), the gauges keep their last value
                log.warning("metrics: could not read the database: %s", error)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    async def _database_ok(bot: ImagineBot) -> bool:
        if bot.database is None:
            return False
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), bot.database.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def _engine_ok(self) -> bool:
        """Healthy when the engine (or one engine of a pool) answers its health check."""
        engines = getattr(self.engine, "engines", None) or [self.engine]
        for engine in engines:
            check = getattr(engine, "health", None)
            if check is None:
                return True  # an in-process engine is as healthy as this process
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    if await check():
                        return True
            except Exception:
                continue
        return False
