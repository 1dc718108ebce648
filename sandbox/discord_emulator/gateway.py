"""The gateway WebSocket at ``/ws``: HELLO, heartbeats, IDENTIFY → READY + GUILD_CREATE, RESUME, dispatches.

Frames are plain JSON text (discord.py only decompresses binary frames). One session per IDENTIFY; the newest
identified session is the "current" one and receives dispatches. A session keeps its events so a RESUME replays
what the bot missed; an unknown session id gets INVALID_SESSION (op 9, ``d: false``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_NOT_AUTHENTICATED = 4003


@dataclass
class GatewaySession:
    """An identified gateway session; ``ws`` is None while the bot is between connections."""

    session_id: str
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    resumes: int = 0
    closed_for_good: bool = False

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed


class Gateway:
    """Holds gateway sessions and serves WebSocket connections for one emulator."""

    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        self.connections = 0  # WebSocket connections accepted so far
        self.identifies = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def connected(self) -> bool:
        return self.current is not None and self.current.connected

    async def _send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        if ws.closed:
            return
        lock = self._locks.setdefault(id(ws), asyncio.Lock())
        async with lock:
            try:
                await ws.send_str(json.dumps(payload))
            except (ConnectionError, RuntimeError) as exc:  # socket went away mid-send
                log.debug("gateway send failed: %s", exc)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.connections += 1
        self._sockets.add(ws)
        session: GatewaySession | None = None
        try:
            await self._send(
                ws, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None}
            )
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    log.debug("gateway: undecodable frame")
                    continue
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    await self._send(ws, {"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    session = await self._identify(ws, data or {})
                    if session is None:
                        break
                elif op == 6:
                    session = await self._resume(ws, data or {})
                elif op == 8 and session is not None:
                    await self._members_chunk(session, data or {})
                else:
                    log.debug("gateway: ignoring op %s", op)
        finally:
            self._sockets.discard(ws)
            self._locks.pop(id(ws), None)
            if session is not None and session.ws is ws:
                session.ws = None
                if ws.close_code in (1000, 1001):
                    session.closed_for_good = True
            self.emu._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        token = str(data.get("token", ""))
        if token.removeprefix("Bot ") != self.emu.bot_token:
            self.emu._violation("gateway IDENTIFY", "IDENTIFY with an invalid token (closed 4004)")
            await ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        self.identifies += 1
        session = GatewaySession(session_id=secrets.token_hex(16), ws=ws)
        self.sessions[session.session_id] = session
        self.current = session
        await self.dispatch_to(session, "READY", self.emu.payloads.ready(session.session_id))
        await self.dispatch_to(session, "GUILD_CREATE", self.emu.payloads.guild_create())
        self.emu._notify()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        token = str(data.get("token", "")).removeprefix("Bot ")
        if session is None or session.closed_for_good or token != self.emu.bot_token:
            await self._send(ws, {"op": 9, "d": False, "s": None, "t": None})
            return None
        session.ws = ws
        session.resumes += 1
        self.current = session
        last = int(data.get("seq") or 0)
        for event in session.events:
            if event["s"] > last:
                await self._send(ws, event)
        await self.dispatch_to(session, "RESUMED", {})
        self.emu._notify()
        return session

    async def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        members = [self.emu.payloads.member(u) for u in self.emu._users.values()]
        chunk: dict[str, Any] = {
            "guild_id": str(self.emu.guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self.dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def dispatch_to(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        """Send (or keep for a later RESUME) one op 0 dispatch on a session."""
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(frame)
        if session.ws is not None:
            await self._send(session.ws, frame)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Dispatch to the current session, if any."""
        if self.current is not None and not self.current.closed_for_good:
            await self.dispatch_to(self.current, event, data)

    async def send_reconnect(self) -> GatewaySession:
        """Send op 7 on the current connection."""
        session = self.current
        if session is None or session.ws is None:
            raise RuntimeError("no bot is connected to the emulator's gateway")
        await self._send(session.ws, {"op": 7, "d": None, "s": None, "t": None})
        return session

    async def send_invalid_session(self) -> GatewaySession:
        """Send op 9 INVALID_SESSION (``d: false``: not resumable) on the current connection; the
        session is closed for good, so the bot must IDENTIFY again."""
        session = self.current
        if session is None or session.ws is None:
            raise RuntimeError("no bot is connected to the emulator's gateway")
        session.closed_for_good = True
        await self._send(session.ws, {"op": 9, "d": False, "s": None, "t": None})
        return session

    async def close_all(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"emulator stopping")
