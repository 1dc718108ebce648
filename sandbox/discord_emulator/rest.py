"""REST routes under ``/api/v10``: login, commands, interaction callbacks, webhooks, channel messages.

Every handler raises ``APIError`` to refuse a request; the middleware in ``http_app`` turns it into Discord's
error JSON and, for broken rules, a recorded violation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .bodies import read_body
from .errors import APIError, invalid_webhook_token, unknown_interaction, unknown_message
from .messages import apply_payload
from .records import EPHEMERAL, LOADING, Interaction, Message
from .validation import validate_commands, validate_modal

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

ACK_DEADLINE = 3.0  # seconds from interaction creation to the first callback
TOKEN_LIFETIME = 15 * 60.0  # seconds an interaction token may be used for webhooks
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
NONCE_WINDOW = 5 * 60.0
"""Seconds a message's nonce is remembered for ``enforce_nonce`` (Discord: "the past few minutes")."""


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


class RestAPI:
    """Route handlers bound to one emulator."""

    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu

    def add_routes(self, app: web.Application, prefix: str) -> None:
        r = app.router
        p = prefix
        r.add_get(p + "/users/@me", self.get_me)
        r.add_get(p + "/users/{uid:\\d+}", self.get_user)
        r.add_get(p + "/oauth2/applications/@me", self.get_application)
        r.add_get(p + "/applications/@me", self.get_application)
        r.add_get(p + "/gateway", self.get_gateway)
        r.add_get(p + "/gateway/bot", self.get_gateway_bot)
        r.add_get(p + "/applications/{app}/commands", self.get_commands)
        r.add_put(p + "/applications/{app}/commands", self.put_commands)
        r.add_get(p + "/applications/{app}/guilds/{gid}/commands", self.get_commands)
        r.add_put(p + "/applications/{app}/guilds/{gid}/commands", self.put_commands)
        r.add_post(p + "/interactions/{iid}/{token}/callback", self.interaction_callback)
        r.add_post(p + "/webhooks/{app}/{token}", self.webhook_execute)
        r.add_get(p + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_get)
        r.add_patch(p + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_edit)
        r.add_delete(p + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_delete)
        r.add_get(p + "/channels/{cid}", self.get_channel)
        r.add_get(p + "/channels/{cid}/messages", self.list_messages)
        r.add_post(p + "/channels/{cid}/messages", self.create_message)
        r.add_get(p + "/channels/{cid}/messages/{mid}", self.get_message)
        r.add_patch(p + "/channels/{cid}/messages/{mid}", self.edit_message)
        r.add_delete(p + "/channels/{cid}/messages/{mid}", self.delete_message)
        r.add_post(p + "/channels/{cid}/typing", self.no_content)
        r.add_put(p + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self.reaction)
        r.add_delete(p + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self.reaction)
        r.add_get(p + "/guilds/{gid}", self.get_guild)
        r.add_get(p + "/guilds/{gid}/members/{uid}", self.get_member)

    # -- login and discovery -------------------------------------------------------------------------------
    async def get_me(self, request: web.Request) -> web.Response:
        return self.emu._json(self.emu.bot_user.to_json() | {"verified": True, "mfa_enabled": False})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.emu._users.get(int(request.match_info["uid"]))
        if user is None:
            raise APIError(404, 10013, "Unknown User", violation=False)
        return self.emu._json(user.to_json())

    async def get_application(self, request: web.Request) -> web.Response:
        return self.emu._json(self.emu.payloads.application())

    async def get_gateway(self, request: web.Request) -> web.Response:
        return self.emu._json({"url": self.emu.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        return self.emu._json(
            {
                "url": self.emu.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def get_guild(self, request: web.Request) -> web.Response:
        self._check_guild(request.match_info["gid"])
        data = self.emu.payloads.guild_create()
        return self.emu._json({k: v for k, v in data.items() if k not in ("members", "channels", "threads")})

    async def get_member(self, request: web.Request) -> web.Response:
        self._check_guild(request.match_info["gid"])
        user = self.emu._users.get(int(request.match_info["uid"]))
        if user is None:
            raise APIError(404, 10007, "Unknown Member", violation=False)
        return self.emu._json(self.emu.payloads.member(user))

    def _check_guild(self, gid: str) -> None:
        if gid != str(self.emu.guild_id):
            raise APIError(404, 10004, "Unknown Guild", rule=f"guild {gid} does not exist")

    # -- application commands ------------------------------------------------------------------------------
    def _scope(self, request: web.Request) -> int | None:
        if request.match_info["app"] != str(self.emu.application_id):
            raise APIError(403, 50001, "Missing Access", rule="commands route for another application id")
        gid = request.match_info.get("gid")
        if gid is None:
            return None
        self._check_guild(gid)
        return int(gid)

    async def get_commands(self, request: web.Request) -> web.Response:
        return self.emu._json(self.emu.commands.get(self._scope(request), []))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body = await request.json() if request.can_read_body else []
        if not isinstance(body, list):
            raise APIError(400, 50035, "Invalid Form Body", rule="bulk command overwrite body is not a list")
        validate_commands(body)
        emu = self.emu
        previous = {(c["type"], c["name"]): c for c in emu.commands.get(scope, [])}
        stored: list[dict[str, Any]] = []
        for cmd in body:
            ctype = cmd.get("type", 1)
            old = previous.get((ctype, cmd["name"]))
            entry = {
                "options": [],
                "nsfw": False,
                "dm_permission": True,
                "default_member_permissions": None,
                "contexts": None,
                "integration_types": None,
                "description": "",
            } | cmd
            entry.update(
                type=ctype,
                id=old["id"] if old else str(emu.snowflakes.next()),
                application_id=str(emu.application_id),
                version=str(emu.snowflakes.next()),
            )
            if scope is not None:
                entry["guild_id"] = str(scope)
            stored.append(entry)
        emu.commands[scope] = stored
        emu._notify()
        return emu._json(stored)

    # -- interaction callbacks -----------------------------------------------------------------------------
    async def interaction_callback(self, request: web.Request) -> web.Response:
        emu = self.emu
        ix = (
            emu._interactions.get(int(request.match_info["iid"]))
            if request.match_info["iid"].isdigit()
            else None
        )
        if ix is None or ix.token != request.match_info["token"]:
            raise unknown_interaction("callback for an unknown interaction id/token")
        payload, uploads = await read_body(request)
        ctype = payload.get("type")
        age = emu.clock.now() - ix.created_at
        if ix.responses:
            ix.rejected.append(f"type {ctype}: already acknowledged")
            raise APIError(
                400,
                40060,
                "Interaction has already been acknowledged.",
                rule=f"second acknowledgement (type {ctype}) of interaction {ix.id}; first was type {ix.responses[0]}",
            )
        if age > ACK_DEADLINE:
            ix.rejected.append(f"type {ctype}: {age:.2f}s late")
            raise unknown_interaction(
                f"first response to interaction {ix.id} came {age:.2f}s after it was created (limit {ACK_DEADLINE:.0f}s)"
            )
        data = payload.get("data") or {}
        message: Message | None = None
        if ctype == 4:
            message = emu._new_interaction_message(ix)
            apply_payload(emu, message, data, uploads, size_limit=ix.attachment_size_limit, is_edit=False)
            await emu._store_message(message)
            ix.response_message_id = message.id
        elif ctype == 5:
            message = emu._new_interaction_message(ix)
            message.flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            await emu._store_message(message)
            ix.response_message_id = message.id
        elif ctype in (6, 7):
            if ix.message_id is None:
                raise APIError(
                    400,
                    50035,
                    "Invalid Form Body",
                    rule=f"callback type {ctype} (update message) for an interaction without a message",
                )
            ix.response_message_id = ix.message_id
            if ctype == 7:
                message = emu._messages[ix.message_id]
                apply_payload(emu, message, data, uploads, size_limit=ix.attachment_size_limit, is_edit=True)
                await emu._message_edited(message)
        elif ctype == 9:
            if ix.type == 5:
                raise APIError(400, 50035, "Invalid Form Body", rule="a modal cannot answer a modal submit")
            validate_modal(data)
            ix.modal = data
        else:
            raise APIError(
                400, 50035, "Invalid Form Body", rule=f"unsupported interaction callback type {ctype!r}"
            )
        ix.responses.append(int(ctype))
        ix._acked.set()
        emu._notify()
        if not _truthy(request.query.get("with_response")):
            return web.Response(status=204)
        resource: dict[str, Any] = {"type": ctype}
        if message is not None:
            resource["message"] = emu.payloads.message(message)
        return emu._json(
            {
                "interaction": {
                    "id": str(ix.id),
                    "type": ix.type,
                    "response_message_id": str(ix.response_message_id) if ix.response_message_id else None,
                    "response_message_loading": ctype == 5,
                    "response_message_ephemeral": bool(message and message.ephemeral),
                    "activity_instance_id": None,
                },
                "resource": resource,
            }
        )

    # -- interaction webhooks ------------------------------------------------------------------------------
    def _webhook_interaction(self, request: web.Request) -> Interaction:
        emu = self.emu
        route = f"{request.method} {request.path}"
        if request.match_info["app"] != str(emu.application_id):
            raise APIError(
                404, 10015, "Unknown Webhook", rule=f"webhook id is not the application id ({route})"
            )
        ix = emu._by_token.get(request.match_info["token"])
        if ix is None:
            raise invalid_webhook_token("unknown interaction token")
        age = emu.clock.now() - ix.created_at
        if age > TOKEN_LIFETIME:
            raise invalid_webhook_token(
                f"interaction token used {age / 60:.1f} min after the interaction (tokens live 15 min)"
            )
        return ix

    def _webhook_message(self, ix: Interaction, mid: str) -> Message:
        emu = self.emu
        if mid == "@original":
            if not ix.responses or ix.response_message_id is None:
                raise unknown_message(
                    f"@original of interaction {ix.id} used before the interaction was acknowledged"
                    if not ix.responses
                    else f"@original of interaction {ix.id} does not exist (acknowledged with type {ix.responses[0]})"
                )
            message_id = ix.response_message_id
        else:
            if not mid.isdigit():
                raise unknown_message(f"bad message id {mid!r}")
            message_id = int(mid)
            if message_id != ix.response_message_id and message_id not in ix.followup_ids:
                raise unknown_message(f"message {mid} was not sent through interaction {ix.id}'s webhook")
        msg = emu._messages.get(message_id)
        if msg is None or msg.deleted:
            raise unknown_message(f"message {message_id} was deleted")
        return msg

    async def webhook_get(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        try:
            msg = self._webhook_message(ix, request.match_info["mid"])
        except APIError as error:
            error.violation = False  # asking whether a message exists breaks no rule: the 404 answers it
            raise
        return self.emu._json(self.emu.payloads.message(msg))

    async def webhook_edit(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        msg = self._webhook_message(ix, request.match_info["mid"])
        payload, uploads = await read_body(request)
        apply_payload(self.emu, msg, payload, uploads, size_limit=ix.attachment_size_limit, is_edit=True)
        await self.emu._message_edited(msg)
        return self.emu._json(self.emu.payloads.message(msg))

    async def webhook_delete(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        msg = self._webhook_message(ix, request.match_info["mid"])
        await self.emu._delete(msg)
        return web.Response(status=204)

    async def webhook_execute(self, request: web.Request) -> web.Response:
        emu = self.emu
        ix = self._webhook_interaction(request)
        if not ix.responses:
            raise APIError(
                404,
                10015,
                "Unknown Webhook",
                rule=f"follow-up for interaction {ix.id} sent before acknowledging it",
            )
        payload, uploads = await read_body(request)
        original = emu._messages.get(ix.response_message_id or 0)
        if original is not None and original.loading and not ix.followup_ids and ix.responses[0] == 5:
            # Discord: the first follow-up after a deferred ("thinking") response replaces the loading message.
            apply_payload(emu, original, payload, uploads, size_limit=ix.attachment_size_limit, is_edit=True)
            ix.followup_ids.append(original.id)
            await emu._message_edited(original)
            msg = original
        else:
            msg = emu._new_interaction_message(ix)
            msg.type = 0
            apply_payload(emu, msg, payload, uploads, size_limit=ix.attachment_size_limit, is_edit=False)
            ix.followup_ids.append(msg.id)
            await emu._store_message(msg)
        if not _truthy(request.query.get("wait")):
            return web.Response(status=204)
        return emu._json(emu.payloads.message(msg))

    # -- channel messages ----------------------------------------------------------------------------------
    def _channel(self, request: web.Request) -> int:
        cid = request.match_info["cid"]
        if cid != str(self.emu.channel_id):
            raise APIError(404, 10003, "Unknown Channel", rule=f"channel {cid} does not exist")
        return int(cid)

    def _channel_message(self, request: web.Request, *, violation: bool = True) -> Message:
        cid = self._channel(request)
        mid = request.match_info["mid"]
        msg = self.emu._messages.get(int(mid)) if mid.isdigit() else None
        if msg is None or msg.deleted or msg.ephemeral or msg.channel_id != cid:
            err = unknown_message(f"{request.method} of unknown, deleted or ephemeral message {mid}")
            err.violation = violation
            raise err
        return msg

    async def get_channel(self, request: web.Request) -> web.Response:
        self._channel(request)
        return self.emu._json(self.emu.payloads.channel())

    async def list_messages(self, request: web.Request) -> web.Response:
        cid = self._channel(request)
        limit = min(100, max(1, int(request.query.get("limit", "50"))))
        msgs = [
            m
            for m in self.emu._messages.values()
            if m.channel_id == cid and not m.deleted and not m.ephemeral
        ]
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])]
        msgs.sort(key=lambda m: m.id, reverse=True)
        return self.emu._json([self.emu.payloads.message(m) for m in msgs[:limit]])

    async def get_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request, violation=False)
        return self.emu._json(self.emu.payloads.message(msg))

    async def create_message(self, request: web.Request) -> web.Response:
        emu = self.emu
        cid = self._channel(request)
        payload, uploads = await read_body(request)
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            same = self._message_with_nonce(cid, str(nonce))
            if same is not None:  # Discord: the earlier message is returned and no new one is made
                return emu._json(emu.payloads.message(same))
        msg = Message(
            nonce=None if nonce is None else str(nonce),
            id=emu.snowflakes.next(),
            channel_id=cid,
            author_id=emu.bot_user_id,
            created_at=emu.clock.now(),
        )
        ref = payload.get("message_reference")
        if ref:
            msg.type = 19
            msg.message_reference = {
                "message_id": str(ref.get("message_id")),
                "channel_id": str(cid),
                "guild_id": str(emu.guild_id),
            }
        apply_payload(emu, msg, payload, uploads, size_limit=DEFAULT_UPLOAD_LIMIT, is_edit=False)
        msg.flags &= ~EPHEMERAL  # ephemeral exists only for interaction responses
        await emu._store_message(msg)
        return emu._json(emu.payloads.message(msg))

    def _message_with_nonce(self, channel_id: int, nonce: str) -> Message | None:
        """The bot's message in the channel created with ``nonce`` within ``NONCE_WINDOW`` seconds."""
        now = self.emu.clock.now()
        for msg in self.emu._messages.values():
            if (
                msg.channel_id == channel_id
                and msg.nonce == nonce
                and msg.author_id == self.emu.bot_user_id
                and now - msg.created_at <= NONCE_WINDOW
            ):
                return msg
        return None

    async def edit_message(self, request: web.Request) -> web.Response:
        emu = self.emu
        msg = self._channel_message(request)
        if msg.author_id != emu.bot_user_id:
            raise APIError(
                403,
                50005,
                "Cannot edit a message authored by another user",
                rule=f"edit of message {msg.id} authored by user {msg.author_id}",
            )
        payload, uploads = await read_body(request)
        apply_payload(emu, msg, payload, uploads, size_limit=DEFAULT_UPLOAD_LIMIT, is_edit=True)
        await emu._message_edited(msg)
        return emu._json(emu.payloads.message(msg))

    async def delete_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request, violation=False)
        await self.emu._delete(msg)
        return web.Response(status=204)

    async def reaction(self, request: web.Request) -> web.Response:
        self._channel_message(request)
        return web.Response(status=204)

    async def no_content(self, request: web.Request) -> web.Response:
        self._channel(request)
        return web.Response(status=204)
