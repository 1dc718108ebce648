"""Bounds on image prompts being downloaded and decoded at once: one per user, a few for the whole bot.

Decoding a hostile or just large image costs hundreds of megabytes for a moment (a 7000x7000 RGBA PNG of
208 KB peaked at about 465 MB), so a burst of /imagine commands with attachments must not decode them
all at once. A user's second image while their first is still being read is refused (they can retry);
beyond ``total`` images bot-wide, the next one waits for a slot (its interaction is already deferred).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

DECODES_AT_ONCE = 2
"""Image prompts the whole bot downloads and decodes at the same time."""
DECODES_PER_USER = 1


class DecodeBusy(Exception):
    """The user already has as many image prompts being read as allowed; ``str()`` is for the user."""


class DecodeGate:
    def __init__(self, total: int = DECODES_AT_ONCE, per_user: int = DECODES_PER_USER) -> None:
        self._slots = asyncio.Semaphore(max(1, total))
        self.per_user = max(1, per_user)
        self._by_user: Counter[int] = Counter()

    @asynccontextmanager
    async def slot(self, user_id: int) -> AsyncIterator[None]:
        """Hold while downloading and decoding one image of ``user_id``; raises ``DecodeBusy`` at once."""
        if self._by_user[user_id] >= self.per_user:
            raise DecodeBusy("Your previous image is still being read; wait for it, then try again.")
        self._by_user[user_id] += 1
        try:
            async with self._slots:
                yield
        finally:
            self._by_user[user_id] -= 1
            if not self._by_user[user_id]:
                del self._by_user[user_id]

    @property
    def busy_users(self) -> int:
        return len(self._by_user)
