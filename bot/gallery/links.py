"""Signed, expiring gallery links: ``HMAC-SHA256(GALLERY_SECRET, "scope|user_id|expires")``.

A link names its scope (``user``: one user's results; ``admin``: the queue and today's stats), the user it
was made for and when it expires (Unix seconds). Changing any of them breaks the signature; a member's link
can never open the admin page because the scope is signed too.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

Scope = Literal["user", "admin"]


class LinkRefused(Exception):
    """A gallery link that is malformed, tampered with, expired or of the wrong scope; ``str()`` says which."""


@dataclass(frozen=True)
class GalleryGrant:
    scope: Scope
    user_id: int
    expires: int


class LinkSigner:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a gallery link secret must not be empty")
        self._key = secret.encode()

    def signature(self, scope: Scope, user_id: int, expires: int) -> str:
        message = f"{scope}|{user_id}|{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, scope: Scope, user_id: int, expires: int) -> str:
        """The query string of a link (``exp=…&sig=…``)."""
        return urlencode({"exp": expires, "sig": self.signature(scope, user_id, expires)})

    def verify(
        self, scope: Scope, user_id: int, expires: str | None, sig: str | None, now: float
    ) -> GalleryGrant:
        """The grant a link carries, or ``LinkRefused``."""
        if not expires or not sig or not expires.isdigit():
            raise LinkRefused("this gallery link is incomplete; ask the bot for a new one with /gallery")
        expected = self.signature(scope, user_id, int(expires))
        if not hmac.compare_digest(expected, sig):
            raise LinkRefused("this gallery link is not valid; ask the bot for a new one with /gallery")
        if int(expires) < now:
            raise LinkRefused("this gallery link has expired; ask the bot for a new one with /gallery")
        return GalleryGrant(scope, user_id, int(expires))
