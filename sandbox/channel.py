"""The web channel: one Discord channel of the emulator as a web page, for a member and an admin.

The page (``static/``) shows what the chosen user would see in Discord: every public message, and the
ephemeral ones of that user's own interactions. It sends slash commands, button clicks and modal submits
through the emulator's user API (``invoke_slash``, ``click``, ``submit_modal``), exactly what tests do, so
the bot cannot tell the page from Discord. Updates are pushed over a WebSocket after every emulator change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, WSCloseCode, WSMsgType, web

from bot.gallery.web import GalleryWeb
from sandbox.discord_emulator import CommandNotSynced, DiscordEmulator, Interaction, Message, User

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SHOWN_MESSAGES = 60
"""The page shows the newest messages only, as a Discord client does before you scroll up."""


@dataclass(frozen=True)
class SandboxUsers:
    """The two people at the keyboard: a member, and an admin (listed in ADMIN_USER_IDS)."""

    member: User
    admin: User

    def by_role(self, role: str) -> User:
        return self.admin if role == "admin" else self.member

    def name_of(self, user_id: int) -> str:
        for user in (self.member, self.admin):
            if user.id == user_id:
                return user.username
        return str(user_id)


class ChannelWeb:
    def __init__(
        self, emulator: DiscordEmulator, users: SandboxUsers, *, model_note: str, noise_only: bool
    ) -> None:
        self.emu = emulator
        self.users = users
        self.model_note = model_note
        self.noise_only = noise_only
        self.gallery: GalleryWeb | None = None
        self._wakeups: set[asyncio.Event] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        emulator.add_listener(self._changed)

    def attach_gallery(self, gallery: GalleryWeb) -> None:
        """The gallery needs the bot's database, which exists only once the bot has started."""
        self.gallery = gallery
        self._changed()

    def _changed(self) -> None:
        for event in self._wakeups:
            event.set()

    # -- the app -------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        r = app.router
        r.add_get("/", self.page)
        r.add_static("/static", STATIC)
        r.add_get("/api/state", self.state)
        r.add_get("/api/events", self.events)
        r.add_post("/api/command", self.command)
        r.add_post("/api/click", self.click)
        r.add_post("/api/modal", self.modal)
        r.add_get("/attachments/{aid:\\d+}/{filename}", self.attachment)
        r.add_get("/gallery", self.gallery_home)
        r.add_get("/gallery/u/{uid:\\d+}", self._to_gallery("user_page"))
        r.add_get("/gallery/u/{uid:\\d+}/image/{key:[0-9a-f]{64}}.png", self._to_gallery("image"))
        r.add_get("/gallery/admin/{uid:\\d+}", self._to_gallery("admin_page"))
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        """Close open pages' sockets, else the server would wait for them before it stops."""
        self.emu.remove_listener(self._changed)
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the sandbox is stopping")
        self._changed()

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "channel.html")

    def _viewer(self, request: web.Request) -> User:
        return self.users.by_role(request.query.get("as", "member"))

    # -- what a user sees ----------------------------------------------------------------------------------
    def snapshot(self, viewer: User) -> dict[str, Any]:
        interactions = {ix.id: ix for ix in self.emu.interactions()}
        visible = [
            m
            for m in self.emu.messages(self.emu.channel_id, include_deleted=False)
            if not m.ephemeral or self._owner(m, interactions) == viewer.id
        ][-SHOWN_MESSAGES:]
        return {
            "viewer": {"id": str(viewer.id), "name": viewer.username},
            "users": {
                "member": {"id": str(self.users.member.id), "name": self.users.member.username},
                "admin": {"id": str(self.users.admin.id), "name": self.users.admin.username},
            },
            "bot_ready": self.emu.gateway.connected and self.gallery is not None,
            "model": {"note": self.model_note, "noise_only": self.noise_only},
            "commands": self._commands(),
            "messages": [self._message(m, interactions) for m in visible],
            "modal": self._open_modal(viewer, interactions),
        }

    @staticmethod
    def _owner(message: Message, interactions: dict[int, Interaction]) -> int | None:
        ix = interactions.get(message.interaction_id or 0)
        return ix.user_id if ix is not None else None

    def _commands(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for scope in (self.emu.guild_id, None):
            for command in self.emu.commands.get(scope, []):
                if command.get("type", 1) == 1:
                    seen.setdefault(command["name"], command)
        return sorted(seen.values(), key=lambda c: str(c["name"]))

    def _message(self, message: Message, interactions: dict[int, Interaction]) -> dict[str, Any]:
        author = self.emu.get_user(message.author_id)
        ix = interactions.get(message.interaction_id or 0)
        used: dict[str, Any] | None = None
        if ix is not None:
            data = ix.payload.get("data") or {}
            used = {
                "user": self.users.name_of(ix.user_id),
                "command": data.get("name") if ix.type == 2 else None,
            }
        return {
            "id": str(message.id),
            "version": message.edit_count,
            "author": author.username,
            "bot": author.bot,
            "content": message.content,
            "embeds": message.embeds,
            "attachments": [
                {
                    "url": f"/attachments/{a.id}/{a.filename}",
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "width": a.width,
                    "height": a.height,
                }
                for a in message.attachments
            ],
            "components": message.components,
            "loading": message.loading,
            "ephemeral": message.ephemeral,
            "edited": message.edited_at is not None,
            "used": used,
            "reference": (message.message_reference or {}).get("message_id"),
        }

    def _open_modal(self, viewer: User, interactions: dict[int, Interaction]) -> dict[str, Any] | None:
        """The newest modal the bot showed ``viewer`` that no submit has gone to yet."""
        submitted = {ix.submits for ix in interactions.values() if ix.submits is not None}
        for ix in reversed(list(interactions.values())):
            if ix.user_id == viewer.id and ix.modal is not None and ix.id not in submitted:
                return {"interaction_id": str(ix.id), **ix.modal}
        return None

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(self._viewer(request)))

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        """Push the viewer's whole snapshot after each change (changes that come together are sent once)."""
        viewer = self._viewer(request)
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        reader = asyncio.create_task(self._drain(ws))
        try:
            wakeup.set()
            while not ws.closed and not reader.done():
                await wakeup.wait()
                wakeup.clear()
                if ws.closed:
                    break
                await ws.send_str(json.dumps(self.snapshot(viewer)))
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self._wakeups.discard(wakeup)
            self._sockets.discard(ws)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await ws.close()
        return ws

    async def _drain(self, ws: web.WebSocketResponse) -> None:
        """Read (and ignore) what the page sends, so a closed socket is noticed; wake the sender then."""
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
        self._changed()

    # -- what a user does ----------------------------------------------------------------------------------
    async def command(self, request: web.Request) -> web.Response:
        """``payload`` (JSON: ``as``, ``command`` such as ``"admin stats"``, ``options``) plus a file part
        per attachment option (the part's name is the option's name)."""
        uploads: dict[str, tuple[str, bytes]] = {}
        payload: dict[str, Any] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.name == "payload":
                    payload = json.loads(await part.text())
                elif part.filename:
                    uploads[part.name] = (part.filename, bytes(await part.read()))
        else:
            payload = await request.json()
        user = self.users.by_role(str(payload.get("as", "member")))
        name = " ".join(str(payload.get("command", "")).strip().lstrip("/").split())
        options = {k: v for k, v in (payload.get("options") or {}).items() if v not in (None, "")}
        try:
            await self.emu.invoke_slash(name, options, user=user, attachments=uploads or None)
        except (CommandNotSynced, ValueError, KeyError, TypeError) as error:
            return web.json_response({"error": _short(error)}, status=400)
        except TimeoutError:
            return web.json_response(
                {"error": "the bot is not connected yet; try again in a moment"}, status=503
            )
        return web.json_response({"ok": True})

    async def click(self, request: web.Request) -> web.Response:
        payload = await request.json()
        user = self.users.by_role(str(payload.get("as", "member")))
        try:
            await self.emu.click(
                int(payload["message_id"]), str(payload["custom_id"]), user=user, values=payload.get("values")
            )
        except (LookupError, ValueError) as error:
            return web.json_response({"error": _short(error)}, status=400)
        except TimeoutError:
            return web.json_response({"error": "the bot is not connected"}, status=503)
        return web.json_response({"ok": True})

    async def modal(self, request: web.Request) -> web.Response:
        payload = await request.json()
        user = self.users.by_role(str(payload.get("as", "member")))
        interactions = {ix.id: ix for ix in self.emu.interactions()}
        shown = interactions.get(int(payload.get("interaction_id", 0)))
        if shown is None:
            return web.json_response({"error": "no such modal"}, status=400)
        values = {str(k): str(v) for k, v in (payload.get("values") or {}).items()}
        try:
            await self.emu.submit_modal(shown, values, user=user)
        except (LookupError, ValueError) as error:
            return web.json_response({"error": _short(error)}, status=400)
        except TimeoutError:
            return web.json_response({"error": "the bot is not connected"}, status=503)
        return web.json_response({"ok": True})

    async def attachment(self, request: web.Request) -> web.Response:
        """Any file the emulator holds, also a preview an edit has since replaced (a page may still ask)."""
        filename = request.match_info["filename"]
        try:
            data = self.emu.attachment_bytes(int(request.match_info["aid"]))
        except KeyError:
            raise web.HTTPNotFound() from None
        return web.Response(
            body=data,
            content_type=mimetypes.guess_type(filename)[0] or "application/octet-stream",
            headers={"Cache-Control": "max-age=3600"},  # an attachment's bytes never change
        )

    # -- the gallery ---------------------------------------------------------------------------------------
    async def gallery_home(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/gallery/u/{self._viewer(request).id}")

    def _to_gallery(self, handler: str) -> Any:
        async def forward(request: web.Request) -> web.StreamResponse:
            if self.gallery is None:
                raise web.HTTPServiceUnavailable(text="the bot is still starting; reload in a moment")
            response: web.StreamResponse = await getattr(self.gallery, handler)(request)
            return response

        return forward


def _short(error: BaseException) -> str:
    text = str(error.args[0]) if error.args else str(error)
    return text if len(text) <= 300 else text[:299] + "…"
