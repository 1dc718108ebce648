"""The gallery as a service of a real deployment: its own small web server (``GALLERY_PORT``) and the
signed links ``/gallery`` hands out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from bot.gallery.links import LinkSigner, Scope
from bot.gallery.web import DEFAULT_PREFIX, GalleryWeb, admin_path, user_path

log = logging.getLogger(__name__)


class GalleryLinks:
    """Makes the links ``/gallery`` answers with: one for the user's results, one more for admins."""

    def __init__(
        self,
        signer: LinkSigner,
        base_url: str,
        minutes: float,
        *,
        now: Callable[[], float] = time.time,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        """Where the links point; the cog fills it in from the server's port when GALLERY_URL is empty."""
        self.minutes = minutes
        self.now = now
        self.prefix = prefix

    def link(self, scope: Scope, user_id: int) -> str:
        expires = int(self.now() + self.minutes * 60)
        path = user_path(self.prefix, user_id) if scope == "user" else admin_path(self.prefix, user_id)
        return f"{self.base_url}{path}?{self.signer.query(scope, user_id, expires)}"

    def answer(self, user_id: int, *, is_admin: bool) -> str:
        """The private answer to ``/gallery``."""
        minutes = round(self.minutes)
        lines = [
            f"Your results (this link works for {minutes} minutes, for you only): {self.link('user', user_id)}"
        ]
        if is_admin:
            lines.append(f"Queue and today's stats (admins): {self.link('admin', user_id)}")
        return "\n".join(lines)


class GalleryServer:
    """An aiohttp site serving one ``GalleryWeb`` on ``host:port``."""

    def __init__(self, gallery: GalleryWeb, host: str, port: int) -> None:
        self.gallery = gallery
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.gallery.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the port chosen when asked for 0
        log.info("gallery on http://%s:%d%s", self.host, self.port, self.gallery.prefix)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
