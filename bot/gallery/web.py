"""The gallery's aiohttp routes: a user's results page, their full-size images, and the admin page.

Two ways to guard it:
- **signed** (a real Discord deployment, ``GALLERY_PORT``): every URL carries ``exp`` and ``sig`` from
  ``LinkSigner``; a user link opens that user's results and images only, an admin link the admin page only.
- **open** (``python -m bot sandbox``, on loopback): no signature is asked for; anyone who can reach the page
  is the person at the keyboard.

Routes (under ``prefix``, default ``/gallery``): ``/u/{uid}`` (``?q=`` filters by prompt text),
``/u/{uid}/image/{key}.png`` and ``/admin/{uid}``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from bot.gallery.links import LinkRefused, LinkSigner, Scope
from storage.db import Database
from storage.gallery import GalleryRepository
from storage.images import ImageNotFound
from storage.jobs import JobRepository
from storage.stats import StatsRepository

DEFAULT_PREFIX = "/gallery"

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("bot.gallery", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class ImageSource(Protocol):
    """What the gallery needs from the image store."""

    async def get(self, key: str) -> bytes: ...


class GalleryWeb:
    def __init__(
        self,
        database: Database,
        store: ImageSource,
        *,
        signer: LinkSigner | None,
        user_names: Callable[[int], str] | None = None,
        now: Callable[[], float] = time.time,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        """``signer=None`` serves the gallery open (the sandbox); ``store`` has ``async get(key) -> bytes``."""
        self.results = GalleryRepository(database)
        self.jobs = JobRepository(database)
        self.stats = StatsRepository(database)
        self.store = store
        self.signer = signer
        self.user_names = user_names or (lambda uid: str(uid))
        self.now = now
        self.prefix = prefix.rstrip("/")

    def user_path(self, user_id: int) -> str:
        return user_path(self.prefix, user_id)

    # -- routes --------------------------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        p = self.prefix
        app.router.add_get(p + "/u/{uid:\\d+}", self.user_page)
        app.router.add_get(p + "/u/{uid:\\d+}/image/{key:[0-9a-f]{64}}.png", self.image)
        app.router.add_get(p + "/admin/{uid:\\d+}", self.admin_page)

    def app(self) -> web.Application:
        app = web.Application()
        self.add_routes(app)
        return app

    def _authorize(self, request: web.Request, scope: Scope) -> tuple[int, dict[str, str]]:
        """The user id the request may see, and the query to carry on its links; raises 403 if refused."""
        user_id = int(request.match_info["uid"])
        if self.signer is None:
            return user_id, {}
        expires, sig = request.query.get("exp"), request.query.get("sig")
        try:
            self.signer.verify(scope, user_id, expires, sig, self.now())
        except LinkRefused as refused:
            raise web.HTTPForbidden(
                text=_templates.get_template("refused.html").render(reason=str(refused)),
                content_type="text/html",
            ) from None
        return user_id, {"exp": expires or "", "sig": sig or ""}

    async def user_page(self, request: web.Request) -> web.Response:
        user_id, auth = self._authorize(request, "user")
        text = request.query.get("q", "")[:200]
        items = await self.results.results(user_id, text)
        auth_query = urlencode(auth)
        html = _templates.get_template("gallery.html").render(
            user_name=self.user_names(user_id),
            items=items,
            q=text,
            auth=auth,
            image_url=lambda key: (
                f"{self.user_path(user_id)}/image/{key}.png" + (f"?{auth_query}" if auth_query else "")
            ),
            action=self.user_path(user_id),
        )
        return web.Response(text=html, content_type="text/html")

    async def image(self, request: web.Request) -> web.Response:
        user_id, _ = self._authorize(request, "user")
        key = request.match_info["key"]
        if user_id not in await self.results.image_owners(key):
            raise web.HTTPNotFound(text="no such image in this gallery")
        try:
            data = await self.store.get(key)
        except ImageNotFound:
            raise web.HTTPNotFound(text="this image is no longer stored") from None
        return web.Response(
            body=data, content_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
        )

    async def admin_page(self, request: web.Request) -> web.Response:
        self._authorize(request, "admin")
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        waits = sorted(await self.stats.queue_waits(today))
        html = _templates.get_template("admin.html").render(
            queue=await self.jobs.unfinished(),
            user_name=self.user_names,
            by_state=await self.stats.jobs_by("state", today),
            by_tier=await self.stats.jobs_by("tier", today),
            engine_seconds=await self.stats.engine_seconds(today),
            p50=_percentile(waits, 50),
            p95=_percentile(waits, 95),
            day=today.strftime("%Y-%m-%d"),
        )
        return web.Response(text=html, content_type="text/html")


def user_path(prefix: str, user_id: int) -> str:
    return f"{prefix}/u/{user_id}"


def admin_path(prefix: str, user_id: int) -> str:
    return f"{prefix}/admin/{user_id}"


def _percentile(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
