"""What every route module of the engine server shares: the ``Server`` (configuration, job manager,
store, metrics, webhooks) under ``SERVER``, errors, and ``run_and_wait`` for the routes that answer only
when the job is done (sync mode, A1111, OpenAI)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.base import Engine, GenerationRequest
from engine.server.jobs import JobManager, Limits
from engine.server.metrics import ServerMetrics
from engine.server.store import JobStore
from engine.server.webhooks import WebhookSender


class RequestError(Exception):
    """A client's mistake (or a refusal): answered with ``status`` and ``{"error": {code, message, field}}``."""

    def __init__(
        self, message: str, code: str = "invalid_request", status: int = 400, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.status, self.field = code, status, field


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status)


def public_model_name(model: str) -> str:
    """What users are shown of the configured model: an alias or hub id as given, a local path by its
    file or folder name only (never the folders above it)."""
    if model.startswith(("/", ".", "~")) or "\\" in model or Path(model).exists():
        return Path(model).name or "model"
    return model


@dataclass
class ServerConfig:
    token: str | None = None
    model: str = ""  # the public name (``public_model_name``)
    resolution: int = 512
    steps: int = 25
    database_url: str = "sqlite+aiosqlite:///:memory:"
    results_ttl: float = 86400.0
    keep_finished: int = 1000
    limits: Limits = field(default_factory=Limits)
    webhook_secret: str | None = None
    webhook_allow_private: bool = False
    webhook_first_delay: float = 1.0
    webhook_max_seconds: float = 3600.0
    url_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))


@dataclass
class Server:
    engine: Engine
    config: ServerConfig
    status: str = "loading"  # ok | loading | failed
    load_error: str | None = None  # for the log only, never shown (it may hold local paths)
    a1111_model: str | None = None  # set by POST /sdapi/v1/options sd_model_checkpoint
    loader: asyncio.Task[None] | None = None  # the engine's start, in the background
    _manager: JobManager | None = None
    metrics: ServerMetrics = field(init=False)
    webhooks: WebhookSender = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(
            ready=lambda: self.status == "ok",
            queue_length=lambda: self._manager.queue_length if self._manager else 0,
            jobs_by_state=lambda: self._manager.counts() if self._manager else {},
        )
        self.webhooks = WebhookSender(
            secret=self.config.webhook_secret,
            allow_private=self.config.webhook_allow_private,
            first_delay=self.config.webhook_first_delay,
            max_seconds=self.config.webhook_max_seconds,
            on_attempt=lambda outcome: self.metrics.webhooks.labels(outcome).inc(),
        )

    @property
    def manager(self) -> JobManager:
        if self._manager is None:
            raise RequestError("the engine server is starting", "engine_unavailable", 503)
        return self._manager

    async def open(self) -> None:
        store = await JobStore.open(self.config.database_url)
        self._manager = JobManager(
            self.engine,
            store,
            model_name=self.config.model,
            results_ttl=self.config.results_ttl,
            keep_finished=self.config.keep_finished,
            limits=self.config.limits,
            webhooks=self.webhooks,
            metrics=self.metrics,
        )
        await self._manager.recover()
        self._manager.start_reaper()

    async def close(self) -> None:
        if self._manager is not None:
            await self._manager.stop()
            await self._manager.store.close()

    def unavailable(self) -> RequestError | None:
        """The refusal for new work when the model failed to load (by its public name only)."""
        if self.status == "failed":
            return RequestError(
                f"the model {self.config.model} could not be loaded", "engine_unavailable", 503
            )
        return None

    # -- signed result links (OpenAI ``response_format=url``: fetchable without the token) -------------

    def signed_image_path(self, key: str, lifetime: float) -> str:
        expires = int(time.time() + lifetime)
        return f"/images/{key}?expires={expires}&signature={self._signature(key, expires)}"

    def signature_valid(self, key: str, expires: str, signature: str) -> bool:
        try:
            moment = int(expires)
        except ValueError:
            return False
        return moment > time.time() and hmac.compare_digest(self._signature(key, moment), signature)

    def _signature(self, key: str, expires: int) -> str:
        secret = b"links:" + self.config.token.encode() if self.config.token else self.config.url_secret
        return hmac.new(secret, f"{key}:{expires}".encode(), hashlib.sha256).hexdigest()


SERVER = web.AppKey("server", Server)


TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")


async def run_and_wait(
    server: Server, generation: GenerationRequest, init_png: bytes | None = None, *, use_cache: bool = True
) -> dict[str, Any]:
    """Queue a job like any other (same queue, batching and limits) and wait for it to end; its snapshot.

    The wait is bounded by the job's own time limits (it ends TIMED_OUT past them)."""
    refusal = server.unavailable()
    if refusal is not None:
        raise refusal
    manager = server.manager
    snapshot, _ = await manager.submit(generation, init_png=init_png, use_cache=use_cache)
    while snapshot["state"] not in TERMINAL:
        snapshot = await manager.wait(snapshot["id"], 60.0) or snapshot
    return snapshot


async def result_images(server: Server, snapshot: dict[str, Any]) -> list[bytes]:
    """The PNGs of a finished job (links are ``/images/{key}``)."""
    found = []
    for link in snapshot.get("images", []):
        data = await server.manager.image(link.rsplit("/", 1)[-1])
        if data is not None:
            found.append(data)
    return found
