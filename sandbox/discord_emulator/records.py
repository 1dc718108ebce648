# ruff: noqa: ASYNC109  (tests call these with timeout=..., as asyncio.wait_for does)
"""Plain records of what the emulator holds: users, attachments, messages, interactions, requests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

EPHEMERAL = 1 << 6  # message flag 64
LOADING = 1 << 7  # message flag 128: a deferred "thinking" response


@dataclass
class User:
    """A Discord user; every user here is also a member of the emulator's guild."""

    id: int
    username: str
    bot: bool = False
    joined_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.username,
            "avatar": None,
            "bot": self.bot,
            "flags": 0,
            "public_flags": 0,
        }


@dataclass
class Attachment:
    """An uploaded file with its bytes (``data``), served at ``url``."""

    id: int
    filename: str
    content_type: str
    data: bytes
    url: str
    width: int | None = None
    height: int | None = None
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "content_type": self.content_type,
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.width is not None:
            out["width"] = self.width
            out["height"] = self.height
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass
class Message:
    """A message as the channel sees it (``deleted`` ones stay in the record for tests)."""

    id: int
    channel_id: int
    author_id: int
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    interaction_id: int | None = None
    webhook_id: int | None = None
    created_at: float = 0.0
    edited_at: float | None = None
    edit_count: int = 0
    deleted: bool = False
    deleted_at: float | None = None
    message_reference: dict[str, Any] | None = None
    nonce: str | None = None
    # one snapshot per create/edit: {"time", "content", "attachments": [filenames], "custom_ids", "flags"}
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def snapshot(self, at: float) -> None:
        """Append the current state to ``history`` (what a user saw at that moment)."""
        self.history.append(
            {
                "time": at,
                "content": self.content,
                "attachments": [a.filename for a in self.attachments],
                "custom_ids": self.custom_ids(),
                "flags": self.flags,
            }
        )

    def custom_ids(self) -> list[str]:
        """Every ``custom_id`` in the message's components, in order."""
        found: list[str] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if "custom_id" in item:
                    found.append(item["custom_id"])
                walk(item.get("components", []))
                if isinstance(item.get("component"), dict):
                    walk([item["component"]])
                if isinstance(item.get("accessory"), dict):
                    walk([item["accessory"]])

        walk(self.components)
        return found


@dataclass
class Interaction:
    """One interaction the emulator dispatched, and what the bot answered to it."""

    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    created_at: float
    payload: dict[str, Any]
    message_id: int | None = None  # the message a component/modal interaction came from
    responses: list[int] = field(default_factory=list)  # accepted callback types
    rejected: list[str] = field(default_factory=list)  # callbacks refused (late, duplicate, ...)
    response_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    submits: int | None = None  # a modal submit: the interaction whose modal it answers
    attachment_size_limit: int = 10 * 1024 * 1024
    _acked: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def acknowledged(self) -> bool:
        return bool(self.responses)

    async def wait_for_response(self, timeout: float = 5.0) -> int:
        """Wait until the bot acknowledged this interaction; return the callback type."""
        try:
            await asyncio.wait_for(self._acked.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"interaction {self.id} (type {self.type}) got no acknowledgement within {timeout}s"
                + (f"; rejected callbacks: {self.rejected}" if self.rejected else "")
            ) from None
        return self.responses[0]


@dataclass
class RequestRecord:
    """One HTTP request the emulator answered."""

    time: float
    method: str
    path: str
    status: int

    def __iter__(self):  # allows ``t, method, path, status = record``
        return iter((self.time, self.method, self.path, self.status))


@dataclass
class RateLimitHit:
    """A natural 429 the emulator sent (forced ones are not listed)."""

    time: float
    method: str
    path: str
    bucket: str
    retry_after: float
    is_global: bool
