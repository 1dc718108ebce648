# ruff: noqa: ASYNC109  (tests call these with timeout=..., as asyncio.wait_for does)
"""``DiscordEmulator``: the state of one fake Discord (a bot, a guild, a channel, users) and its test API."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .clock import EmulatorClock, SnowflakeFactory
from .errors import APIError
from .gateway import Gateway
from .payloads import Payloads
from .ratelimit import INVALID_REQUEST_LIMIT, Fault, RateLimiter
from .records import Attachment, Interaction, Message, RateLimitHit, RequestRecord, User
from .rest import RestAPI

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"


class CommandNotSynced(LookupError):
    """``invoke_slash`` was asked for a command the bot never synced."""


class DiscordEmulator:
    """A local Discord (REST + gateway) for real, unmodified discord.py 2.7.1."""

    def __init__(
        self,
        bot_token: str = "test-token",
        guild_name: str = "Emu Guild",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.bot_token = bot_token
        self.guild_name = guild_name
        self.host = host
        self.port = port
        self.clock = EmulatorClock()
        self.snowflakes = SnowflakeFactory(self.clock)
        self.payloads = Payloads(self)
        self.gateway = Gateway(self)
        self.limiter = RateLimiter(self.clock)
        self.application_id = self.snowflakes.next()
        self.bot_user_id = self.application_id  # Discord gives a bot user its application's id
        self.guild_id = self.snowflakes.next()
        self.channel_id = self.snowflakes.next()
        self._users: dict[int, User] = {}
        self._messages: dict[int, Message] = {}
        self._interactions: dict[int, Interaction] = {}
        self._by_token: dict[str, Interaction] = {}
        self._attachments: dict[int, Attachment] = {}
        self._faults: list[Fault] = []
        self._changed: asyncio.Event = asyncio.Event()
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.violations: list[str] = []
        self.unhandled: list[str] = []
        self.requests: list[RequestRecord] = []
        self.rate_limit_hits: list[RateLimitHit] = []
        self.invalid_requests = 0
        self.bot_user = self._add_user("ImagineBot", bot=True, user_id=self.bot_user_id)
        self.default_user = self.add_user("tester")
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ws", self.gateway.handle)
        app.router.add_get("/attachments/{aid}/{filename}", self._serve_attachment)
        RestAPI(self).add_routes(app, API_PREFIX)
        app.router.add_route("*", "/{tail:.*}", self._unhandled)
        return app

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        self._changed = asyncio.Event()
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- users ---------------------------------------------------------------------------------------------
    def _add_user(self, name: str, *, bot: bool = False, user_id: int | None = None) -> User:
        user = User(id=user_id or self.snowflakes.next(), username=name, bot=bot, joined_at=self.clock.iso())
        self._users[user.id] = user
        return user

    def add_user(self, name: str) -> User:
        """A new guild member (bots that connect later see it in GUILD_CREATE)."""
        return self._add_user(name)

    def get_user(self, user_id: int) -> User:
        return self._users[user_id]

    # -- clock and faults ----------------------------------------------------------------------------------
    def advance_clock(self, seconds: float) -> None:
        """Move the emulator clock forward (deadlines, token expiry, rate-limit windows, snowflakes)."""
        self.clock.advance(seconds)
        self._notify()

    def force_429(
        self,
        method: str | None = None,
        path_contains: str = "",
        count: int = 1,
        retry_after: float = 0.3,
        is_global: bool = False,
    ) -> Fault:
        """Answer the next ``count`` matching requests with a proper 429 (not a violation)."""
        fault = Fault(429, method, path_contains, count, retry_after=retry_after, is_global=is_global)
        self._faults.append(fault)
        return fault

    def force_status(
        self, status: int = 500, method: str | None = None, path_contains: str = "", count: int = 1
    ) -> Fault:
        """Answer the next ``count`` matching requests with ``status`` (e.g. a 5xx)."""
        fault = Fault(status, method, path_contains, count)
        self._faults.append(fault)
        return fault

    async def send_reconnect(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Send op 7 RECONNECT; with ``wait``, return once the bot has RESUMEd."""
        session = await self.gateway.send_reconnect()
        before = session.resumes
        if wait:
            await self.wait_for(
                lambda: session.resumes > before and session.connected,
                timeout,
                what="the bot to RESUME after op 7",
            )

    # -- waiting -------------------------------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self,
        predicate: Callable[[], Any | Awaitable[Any]],
        timeout: float = 10.0,
        *,
        what: str | None = None,
    ) -> Any:
        """Wait until ``predicate()`` (sync or async) is truthy; re-checked on every state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
            except TimeoutError:
                pass

    async def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Wait until a bot identified and was sent READY and GUILD_CREATE."""
        await self.wait_for(lambda: self.gateway.connected, timeout, what="a bot to IDENTIFY on the gateway")

    async def wait_for_commands(
        self, names: Iterable[str], timeout: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """Wait until every command name is synced in some scope; return them by name."""
        wanted = set(names)

        def found() -> dict[str, dict[str, Any]] | None:
            have = {c["name"]: c for scope in self.commands.values() for c in scope}
            return {n: have[n] for n in wanted} if wanted <= have.keys() else None

        return await self.wait_for(found, timeout, what=f"commands {sorted(wanted)} to be synced")

    # -- records -------------------------------------------------------------------------------------------
    def messages(self, channel_id: int | None = None, *, include_deleted: bool = True) -> list[Message]:
        """Messages in creation order (all channels when ``channel_id`` is None)."""
        return [
            m
            for m in self._messages.values()
            if (channel_id is None or m.channel_id == channel_id) and (include_deleted or not m.deleted)
        ]

    def get_message(self, message_id: int) -> Message:
        return self._messages[message_id]

    def attachment_bytes(self, attachment: Attachment | int) -> bytes:
        att_id = attachment if isinstance(attachment, int) else attachment.id
        return self._attachments[att_id].data

    def interactions(self) -> list[Interaction]:
        return list(self._interactions.values())

    def assert_clean(self) -> None:
        """Raise AssertionError listing protocol violations and unhandled routes, if any."""
        problems = [f"violation: {v}" for v in self.violations] + [
            f"unhandled route: {u}" for u in self.unhandled
        ]
        if problems:
            raise AssertionError("Discord emulator recorded problems:\n  " + "\n  ".join(problems))

    # -- interactions --------------------------------------------------------------------------------------
    def _find_command(self, name: str) -> tuple[dict[str, Any], int | None]:
        for scope in (self.guild_id, None):
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd, scope
        synced = {
            ("global" if s is None else f"guild {s}"): [c["name"] for c in cs]
            for s, cs in self.commands.items()
        }
        raise CommandNotSynced(
            f"slash command {name!r} was not synced by the bot; synced: {synced or 'nothing'}"
        )

    def _new_interaction(self, itype: int, user: User | None, message_id: int | None = None) -> Interaction:
        ix = Interaction(
            id=self.snowflakes.next(),
            token="aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48),
            type=itype,
            user_id=(user or self.default_user).id,
            channel_id=self.channel_id,
            created_at=self.clock.now(),
            payload={},
            message_id=message_id,
        )
        self._interactions[ix.id] = ix
        self._by_token[ix.token] = ix
        return ix

    async def _dispatch_interaction(
        self, ix: Interaction, data: dict[str, Any], connect_timeout: float
    ) -> Interaction:
        if not self.gateway.connected:
            await self.wait_for(
                lambda: self.gateway.connected,
                connect_timeout,
                what="a bot connected to the gateway (needed to deliver the interaction)",
            )
        ix.created_at = self.clock.now()
        ix.payload = self.payloads.interaction(ix, data)
        await self.gateway.dispatch("INTERACTION_CREATE", ix.payload)
        self._notify()
        return ix

    async def invoke_slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: User | None = None,
        attachments: dict[str, tuple[str, bytes]] | None = None,
        connect_timeout: float = 5.0,
    ) -> Interaction:
        """Dispatch INTERACTION_CREATE type 2 for a synced slash command.

        ``name`` may hold subcommands (``"admin tier"``). ``options`` maps option names to values (a ``User`` or an
        id for user options); ``attachments`` maps attachment-option names to ``(filename, bytes)``.
        """
        parts = name.split()
        cmd, scope = self._find_command(parts[0])
        resolved: dict[str, dict[str, Any]] = {}
        defs: list[dict[str, Any]] = cmd.get("options") or []
        chain: list[dict[str, Any]] = []
        for sub in parts[1:]:
            sub_def = next((o for o in defs if o["name"] == sub and o.get("type") in (1, 2)), None)
            if sub_def is None:
                raise CommandNotSynced(f"command {parts[0]!r} has no subcommand {sub!r}")
            chain.append({"name": sub, "type": sub_def["type"], "options": []})
            defs = sub_def.get("options") or []
        values = dict(options or {})
        for opt_name, upload in (attachments or {}).items():
            values[opt_name] = upload
        leaf = [self._option(defs, k, v, resolved) for k, v in values.items()]
        missing = [o["name"] for o in defs if o.get("required") and o["name"] not in values]
        if missing:
            raise ValueError(f"required options missing for /{name}: {missing}")
        if chain:
            for outer, inner in zip(chain, chain[1:], strict=False):
                outer["options"] = [inner]
            chain[-1]["options"] = leaf
            top = [chain[0]]
        else:
            top = leaf
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": top}
        if resolved:
            data["resolved"] = resolved
        if scope is not None:
            data["guild_id"] = str(scope)
        ix = self._new_interaction(2, user)
        return await self._dispatch_interaction(ix, data, connect_timeout)

    def _option(
        self, defs: list[dict[str, Any]], name: str, value: Any, resolved: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        spec = next((o for o in defs if o["name"] == name), None)
        if spec is None:
            raise ValueError(f"unknown option {name!r}; the command has {[o['name'] for o in defs]}")
        otype = spec.get("type", 3)
        if otype == 11:
            filename, data = value
            upload_id = self.snowflakes.next()
            from .bodies import image_size

            ctype = "image/png" if filename.lower().endswith(".png") else "application/octet-stream"
            import mimetypes

            ctype = mimetypes.guess_type(filename)[0] or ctype
            size = image_size(data)
            att = Attachment(
                upload_id,
                filename,
                ctype,
                bytes(data),
                f"{self.base_url}/attachments/{upload_id}/{filename}",
                width=size[0] if size else None,
                height=size[1] if size else None,
            )
            self._attachments[att.id] = att
            resolved.setdefault("attachments", {})[str(att.id)] = att.to_json()
            value = str(att.id)
        elif otype == 6:
            user = value if isinstance(value, User) else self._users[int(value)]
            resolved.setdefault("users", {})[str(user.id)] = user.to_json()
            member = self.payloads.member(user)
            member.pop("user")
            resolved.setdefault("members", {})[str(user.id)] = member
            value = str(user.id)
        elif otype in (7, 8, 9):
            value = str(value)
        elif otype == 4:
            value = int(value)
        elif otype == 10:
            value = float(value)
        elif otype == 5:
            value = bool(value)
        return {"name": name, "type": otype, "value": value}

    async def click(
        self,
        message_id: int,
        custom_id: str,
        *,
        user: User | None = None,
        values: list[str] | None = None,
        connect_timeout: float = 5.0,
    ) -> Interaction:
        """Dispatch INTERACTION_CREATE type 3 for a component on a message (with the full current message)."""
        msg = self._messages.get(message_id)
        if msg is None or msg.deleted:
            raise LookupError(f"message {message_id} does not exist (or was deleted)")
        component = _find_component(msg.components, custom_id)
        if component is None:
            raise LookupError(
                f"message {message_id} has no component {custom_id!r}; it has {msg.custom_ids()}"
            )
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; a user cannot use it")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component.get("type", 2)}
        if component.get("type") in (3, 5, 6, 7, 8):
            data["values"] = list(values or [])
        ix = self._new_interaction(3, user, message_id=message_id)
        return await self._dispatch_interaction(ix, data, connect_timeout)

    async def submit_modal(
        self,
        modal_interaction: Interaction,
        values: dict[str, str],
        *,
        user: User | None = None,
        connect_timeout: float = 5.0,
    ) -> Interaction:
        """Dispatch INTERACTION_CREATE type 5 answering the modal the bot sent to ``modal_interaction``.

        As in Discord, only the user the modal was shown to can submit it, and the modal closes once the
        bot answers one of its submits; until then it stays open and may be submitted again (a submit
        that got no answer in time, or a double press).
        """
        modal = modal_interaction.modal
        if modal is None:
            raise LookupError(f"interaction {modal_interaction.id} was not answered with a modal")
        if user is not None and user.id != modal_interaction.user_id:
            raise ValueError(f"the modal of interaction {modal_interaction.id} was shown to another user")
        answered = [ix.id for ix in self._interactions.values() if ix.submits == modal_interaction.id]
        if any(self._interactions[i].responses for i in answered):
            raise ValueError(
                f"the modal of interaction {modal_interaction.id} is closed: the bot answered a submit of it"
            )
        components: list[dict[str, Any]] = []
        for item in modal.get("components", []):
            if item.get("type") == 1:
                inner = [
                    {
                        "type": c.get("type", 4),
                        "custom_id": c["custom_id"],
                        "value": values.get(c["custom_id"], ""),
                    }
                    for c in item.get("components", [])
                    if "custom_id" in c
                ]
                components.append({"type": 1, "components": inner})
            elif item.get("type") == 18 and isinstance(item.get("component"), dict):
                c = item["component"]
                components.append(
                    {
                        "type": 18,
                        "component": {
                            "type": c.get("type", 4),
                            "custom_id": c["custom_id"],
                            "value": values.get(c["custom_id"], ""),
                        },
                    }
                )
        data = {"custom_id": modal["custom_id"], "components": components}
        ix = self._new_interaction(
            5, self._users[modal_interaction.user_id], message_id=modal_interaction.message_id
        )
        ix.submits = modal_interaction.id
        return await self._dispatch_interaction(ix, data, connect_timeout)

    # -- message state (used by the REST handlers) ---------------------------------------------------------
    def _new_interaction_message(self, ix: Interaction) -> Message:
        return Message(
            id=self.snowflakes.next(),
            channel_id=ix.channel_id,
            author_id=self.bot_user_id,
            type=20 if ix.type == 2 else 19,
            interaction_id=ix.id,
            webhook_id=self.application_id,
            created_at=self.clock.now(),
        )

    async def _store_message(self, msg: Message) -> None:
        self._messages[msg.id] = msg
        msg.snapshot(msg.created_at)
        self._notify()
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_CREATE", self.payloads.message(msg))

    async def _message_edited(self, msg: Message) -> None:
        msg.edit_count += 1
        msg.edited_at = self.clock.now()
        msg.snapshot(msg.edited_at)
        self._notify()
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_UPDATE", self.payloads.message(msg))

    async def _delete(self, msg: Message) -> None:
        msg.deleted = True
        msg.deleted_at = self.clock.now()
        self._notify()
        if not msg.ephemeral:
            await self.gateway.dispatch(
                "MESSAGE_DELETE",
                {"id": str(msg.id), "channel_id": str(msg.channel_id), "guild_id": str(self.guild_id)},
            )

    # -- HTTP plumbing -------------------------------------------------------------------------------------
    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        """A JSON answer with Content-Type exactly ``application/json`` (discord.py compares it verbatim)."""
        hdrs = {"Content-Type": "application/json"} | (headers or {})
        return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)

    def _violation(self, route: str, rule: str) -> None:
        text = f"{route}: {rule}"
        log.debug("violation %s", text)
        self.violations.append(text)
        self._notify()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                fault.count -= 1
                fault.hits.append(f"{method} {path}")
                return fault
        return None

    def _rate_limited(self, retry_after: float, is_global: bool, headers: dict[str, str]) -> web.Response:
        hdrs = {"Retry-After": str(max(1, round(retry_after + 0.5))), "Via": "1.1 google"} | headers
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
        if not is_global:
            hdrs.setdefault("X-RateLimit-Remaining", "0")
        return self._json(body, 429, hdrs)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/ws":
            return await handler(request)
        method, path = request.method, request.path
        route = f"{method} {path}"
        api_path = path[len(API_PREFIX) :] if path.startswith(API_PREFIX + "/") else None
        extra: dict[str, str] = {}
        try:
            if api_path is None:
                response = await handler(request)
            elif (fault := self._take_fault(method, path)) is not None:
                if fault.status == 429:
                    hdrs = self.limiter.headers_for(method, api_path)
                    hdrs["X-RateLimit-Scope"] = "user"
                    response = self._rate_limited(fault.retry_after, fault.is_global, hdrs)
                else:
                    response = self._json(
                        {"code": 0, "message": f"{fault.status}: injected by the emulator"}, fault.status
                    )
            else:
                needs_bot_auth = not api_path.startswith(("/interactions/", "/webhooks/"))
                authorized = request.headers.get("Authorization") == f"Bot {self.bot_token}"
                if needs_bot_auth and not authorized:
                    raise APIError(
                        401,
                        0,
                        "401: Unauthorized",
                        rule="missing or wrong 'Authorization: Bot <token>' header",
                    )
                decision = self.limiter.check(method, api_path, authorized_bot=authorized)
                extra = dict(decision.headers) | {"Via": "1.1 google"}
                if not decision.allowed:
                    self.rate_limit_hits.append(
                        RateLimitHit(
                            self.clock.now(),
                            method,
                            path,
                            decision.bucket,
                            decision.retry_after,
                            decision.is_global,
                        )
                    )
                    response = self._rate_limited(decision.retry_after, decision.is_global, decision.headers)
                else:
                    response = await handler(request)
                    response.headers.update(extra)
        except APIError as err:
            if err.violation:
                self._violation(route, f"{err.rule} -> {err.status} {err.code}")
            response = self._json(err.body(), err.status, extra)
        except web.HTTPException as exc:
            response = self._json({"code": 0, "message": f"{exc.status}: {exc.reason}"}, exc.status, extra)
        self.requests.append(RequestRecord(self.clock.now(), method, path, response.status))
        if response.status in (401, 403, 429):
            self.invalid_requests += 1
            if self.limiter.count_invalid() == INVALID_REQUEST_LIMIT:
                self._violation(
                    route,
                    f"{INVALID_REQUEST_LIMIT} invalid (401/403/429) requests in 10 minutes: "
                    "Discord would ban this IP",
                )
        self._notify()
        return response

    async def _unhandled(self, request: web.Request) -> web.Response:
        self.unhandled.append(f"{request.method} {request.path}")
        return self._json({"code": 0, "message": "404: Not Found"}, 404)

    async def _serve_attachment(self, request: web.Request) -> web.Response:
        aid = request.match_info["aid"]
        att = self._attachments.get(int(aid)) if aid.isdigit() else None
        if att is None:
            return self._json({"code": 0, "message": "404: Not Found"}, 404)
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})


def _find_component(items: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for item in items:
        if item.get("custom_id") == custom_id:
            return item
        for key in ("components",):
            found = _find_component(item.get(key, []) or [], custom_id)
            if found is not None:
                return found
        for key in ("component", "accessory"):
            if isinstance(item.get(key), dict):
                found = _find_component([item[key]], custom_id)
                if found is not None:
                    return found
    return None
