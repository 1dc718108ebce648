"""Moderation policy: banned words (settings + `/admin banned-words`), and a timed block for repeat offenders.

A prompt (and its negative prompt) is checked with ``bot.moderation.BannedWords``. Each refusal is
recorded (the term, not the prompt); ``BLOCK_AFTER`` refusals within a day block the user for
``BLOCK_FOR``, which is written to the audit log. Blocked users are refused at admission.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from bot.moderation import BannedWords, moderation_message
from storage.audit import AuditRepository
from storage.moderation import ModerationRepository
from storage.users import UserRepository

log = logging.getLogger(__name__)

BLOCK_AFTER = 3
BLOCK_FOR = timedelta(hours=1)
SYSTEM_ACTOR = 0
"""The actor id of actions the bot takes on its own (audit log)."""


class Moderator:
    def __init__(
        self,
        repo: ModerationRepository,
        users: UserRepository,
        audit: AuditRepository,
        configured: Iterable[str] = (),
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repo = repo
        self.users = users
        self.audit = audit
        self.configured = tuple(configured)
        self.now = now
        self.words = BannedWords(self.configured)

    async def load(self) -> None:
        """Read the stored words (call at start-up and after every change)."""
        self.words = BannedWords((*self.configured, *await self.repo.words()))

    async def check(self, user_id: int, *texts: str) -> str | None:
        """None if the texts are fine; else the message for the user (the hit is recorded, maybe a block)."""
        term = next((found for text in texts if text and (found := self.words.find(text))), None)
        if term is None:
            return None
        now = self.now()
        hits = await self.repo.record_hit(user_id, term, now)
        log.info("moderation: user %s hit a banned term (%d today)", user_id, hits)
        if hits >= BLOCK_AFTER:
            until = now + BLOCK_FOR
            await self.users.update(user_id, blocked_until=until)
            await self.audit.record(
                SYSTEM_ACTOR, "auto-block", str(user_id), hits=hits, until=until.isoformat()
            )
            return (
                f"{moderation_message()}\nYou have been blocked until <t:{int(until.timestamp())}:t> "
                "after repeated prompts against the rules."
            )
        return moderation_message()

    async def add(self, term: str, actor_id: int) -> bool:
        added = await self.repo.add_word(term.strip().lower(), actor_id)
        await self.load()
        return added

    async def remove(self, term: str) -> bool:
        removed = await self.repo.remove_word(term.strip().lower())
        await self.load()
        return removed
