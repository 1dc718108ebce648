"""Rate limits and injected faults.

Limits chosen (fixed windows on the emulator clock; every response carries ``X-RateLimit-*`` headers so
discord.py paces itself, as it does against Discord):

=========================================================  ==================  ==========================
route                                                      limit               bucket key
=========================================================  ==================  ==========================
global, any request with the bot token                     50 per 1 s          the bot (interaction
                                                                               callbacks and webhook
                                                                               token routes are exempt)
POST   /channels/{cid}/messages                            5 per 5 s           channel
PATCH  /channels/{cid}/messages/{mid}                      5 per 5 s           channel
DELETE /channels/{cid}/messages/{mid}                      5 per 1 s           channel
POST/PATCH/DELETE /webhooks/{app}/{token}[...]             5 per 2 s           interaction token
POST   /interactions/{id}/{token}/callback                 5 per 1 s           interaction
PUT    /applications/{app}[/guilds/{gid}]/commands         10 per 20 s         scope
anything else                                              50 per 1 s          route template + major id
=========================================================  ==================  ==========================

A natural over-limit request gets a real 429 (``Via`` header, JSON ``message``/``retry_after``/``global``,
``Retry-After`` and ``X-RateLimit-*`` headers) and is listed in ``rate_limit_hits``, not in ``violations``.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from .clock import EmulatorClock

GLOBAL_LIMIT = 50
GLOBAL_WINDOW = 1.0
INVALID_REQUEST_LIMIT = 10_000  # per 10 minutes, then Discord bans the IP
INVALID_REQUEST_WINDOW = 600.0

_ID = r"[^/]+"
# (method regex, path regex, limit, window seconds, name); the first match wins. Paths are below /api/v10.
_RULES: list[tuple[str, re.Pattern[str], int, float, str]] = [
    ("POST", re.compile(rf"^/channels/(?P<major>{_ID})/messages$"), 5, 5.0, "channel-message-create"),
    ("PATCH", re.compile(rf"^/channels/(?P<major>{_ID})/messages/{_ID}$"), 5, 5.0, "channel-message-edit"),
    ("DELETE", re.compile(rf"^/channels/(?P<major>{_ID})/messages/{_ID}$"), 5, 1.0, "channel-message-delete"),
    ("POST|PATCH|DELETE", re.compile(rf"^/webhooks/{_ID}/(?P<major>{_ID})(/.*)?$"), 5, 2.0, "webhook-token"),
    ("POST", re.compile(rf"^/interactions/(?P<major>{_ID})/{_ID}/callback$"), 5, 1.0, "interaction-callback"),
    ("PUT", re.compile(rf"^/applications/(?P<major>{_ID}(/guilds/{_ID})?)/commands$"), 10, 20.0, "commands"),
]
_GLOBAL_EXEMPT = re.compile(rf"^/(interactions/{_ID}/{_ID}/callback|webhooks/{_ID}/{_ID})")


@dataclass
class Window:
    """A fixed window: ``count`` requests since ``start``."""

    limit: int
    period: float
    start: float = 0.0
    count: int = 0

    def roll(self, now: float) -> None:
        if now >= self.start + self.period:
            self.start = now
            self.count = 0

    def reset_after(self, now: float) -> float:
        return max(0.0, self.start + self.period - now)


@dataclass
class Decision:
    """What the limiter decided for one request, with the headers to send."""

    allowed: bool
    headers: dict[str, str]
    bucket: str
    retry_after: float = 0.0
    is_global: bool = False


def _ceil3(x: float) -> float:
    return math.ceil(x * 1000) / 1000


class RateLimiter:
    """Global and per-route fixed-window limits, counted on the emulator clock."""

    def __init__(self, clock: EmulatorClock) -> None:
        self._clock = clock
        self._windows: dict[str, Window] = {}
        self._global = Window(GLOBAL_LIMIT, GLOBAL_WINDOW)
        self._invalid: list[float] = []

    def classify(self, method: str, path: str) -> tuple[str, str, int, float]:
        """(bucket name, bucket key, limit, window) for a request path below the API base."""
        for methods, pattern, limit, window, name in _RULES:
            m = pattern.match(path)
            if m and re.fullmatch(methods, method):
                return name, f"{name}:{m.group('major')}", limit, window
        template = re.sub(r"/\d{5,}", "/{id}", path)
        major = re.match(r"^/(channels|guilds|webhooks)/(\d+)", path)
        key = f"{method} {template}:{major.group(2) if major else ''}"
        return f"{method} {template}", key, 50, 1.0

    def check(self, method: str, path: str, *, authorized_bot: bool) -> Decision:
        """Count the request; return whether it may proceed and the headers for its answer."""
        now = self._clock.now()
        name, key, limit, period = self.classify(method, path)
        bucket_hash = hashlib.sha1(name.encode()).hexdigest()[:16]
        window = self._windows.setdefault(key, Window(limit, period, start=now))
        window.roll(now)
        if authorized_bot and not _GLOBAL_EXEMPT.match(path):
            self._global.roll(now)
            if self._global.count >= self._global.limit:
                retry = _ceil3(self._global.reset_after(now))
                headers = {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
                return Decision(False, headers, "global", retry_after=retry, is_global=True)
            self._global.count += 1
        if window.count >= window.limit:
            retry = _ceil3(window.reset_after(now))
            headers = self._headers(window, now, bucket_hash)
            headers["X-RateLimit-Scope"] = "user"
            return Decision(False, headers, key, retry_after=retry)
        window.count += 1
        return Decision(True, self._headers(window, now, bucket_hash), key)

    @staticmethod
    def _headers(window: Window, now: float, bucket_hash: str) -> dict[str, str]:
        reset_after = _ceil3(window.reset_after(now))
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(max(0, window.limit - window.count)),
            "X-RateLimit-Reset": f"{window.start + window.period:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket_hash,
        }

    def headers_for(self, method: str, path: str) -> dict[str, str]:
        """Headers describing a bucket without counting a request (used on forced faults)."""
        now = self._clock.now()
        name, key, limit, period = self.classify(method, path)
        window = self._windows.setdefault(key, Window(limit, period, start=now))
        window.roll(now)
        return self._headers(window, now, hashlib.sha1(name.encode()).hexdigest()[:16])

    def count_invalid(self) -> int:
        """Record one 401/403/429 answer; return how many fall in the last 10 minutes."""
        now = self._clock.now()
        self._invalid.append(now)
        cutoff = now - INVALID_REQUEST_WINDOW
        while self._invalid and self._invalid[0] < cutoff:
            self._invalid.pop(0)
        return len(self._invalid)


@dataclass
class Fault:
    """An injected answer for the next ``count`` requests matching ``method`` and ``path_contains``."""

    status: int
    method: str | None
    path_contains: str
    count: int
    retry_after: float = 0.0
    is_global: bool = False
    hits: list[str] = field(default_factory=list)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.count > 0 and (self.method is None or self.method == method) and self.path_contains in path
        )


class RetryWatch:
    """The waits injected 429s asked for: a request that comes back sooner is an early retry.

    A 429 on a route forbids that same request (method and path) until ``retry_after`` has passed; a global one
    forbids every request made with the bot token that is not exempt from the global limit. ``TOLERANCE``
    absorbs the difference between the loop's monotonic clock a client sleeps on and the emulator's clock.
    """

    TOLERANCE = 0.005

    def __init__(self, clock: EmulatorClock) -> None:
        self._clock = clock
        self._routes: dict[str, float] = {}
        self._global_until = 0.0

    def rate_limited(self, method: str, path: str, retry_after: float, *, is_global: bool) -> None:
        """An injected 429 was sent for ``method path`` (a full request path)."""
        until = self._clock.now() + retry_after
        if is_global:
            self._global_until = max(self._global_until, until)
        else:
            key = f"{method} {path}"
            self._routes[key] = max(self._routes.get(key, 0.0), until)

    def early(self, method: str, path: str, api_path: str, *, authorized_bot: bool) -> str | None:
        """Why this request is an early retry, or None when it is not one."""
        now = self._clock.now()
        until = self._routes.get(f"{method} {path}", 0.0)
        if now < until - self.TOLERANCE:
            return f"retried {until - now:.3f}s before the retry_after of the 429 it got"
        if (
            authorized_bot
            and not _GLOBAL_EXEMPT.match(api_path)
            and now < self._global_until - self.TOLERANCE
        ):
            return f"sent {self._global_until - now:.3f}s before the retry_after of a global 429"
        return None
