"""Webhooks: the engine server POSTs a job's events to the ``callback_url`` given on submit.

Each delivery is a JSON body (``{"event": "completed"|"start"|"progress", "job": <JobSnapshot>}``) with:

    Imaginebot-Webhook-Id:   one id per event; the same on every retry of it (deduplicate on it)
    Imaginebot-Timestamp:    Unix seconds when this attempt was signed
    Imaginebot-Signature:    t=<timestamp>,v1=<hex HMAC-SHA256(ENGINE_WEBHOOK_SECRET, f"{timestamp}.{body}")>

as Stripe signs its webhooks: a receiver recomputes the HMAC over the timestamp, a dot and the raw body,
compares in constant time, and refuses timestamps older than a few minutes (``verify`` does all three).
Without ``ENGINE_WEBHOOK_SECRET`` the signature header is left out.

A 2xx answer is success. Anything else (an error status, a redirect, no connection) is retried with
exponential backoff (1 s, 2 s, 4 s … at most 5 min apart) until ``max_seconds`` (an hour) has passed. Only
public addresses are called, checked after DNS resolution on every attempt by ``engine.safe_fetch``'s SSRF
guard; ``ENGINE_WEBHOOK_ALLOW_PRIVATE=true`` allows private, loopback and link-local ones (a LAN setup).
Progress events are sent once, never retried (a newer one supersedes them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from engine.safe_fetch import FetchPolicy, ImageFetchError, Resolver, pinned_connector

log = logging.getLogger(__name__)

ID_HEADER = "Imaginebot-Webhook-Id"
TIMESTAMP_HEADER = "Imaginebot-Timestamp"
SIGNATURE_HEADER = "Imaginebot-Signature"
EVENT_HEADER = "Imaginebot-Event"
MAX_DELAY = 300.0

ANYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = 300, now: float | None = None
) -> bool:
    """True when ``header`` (``Imaginebot-Signature``) signs ``body`` with ``secret`` and is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


class WebhookRefused(ValueError):
    """The callback URL may not be called (the message says why)."""


class WebhookSender:
    def __init__(
        self,
        *,
        secret: str | None,
        allow_private: bool = False,
        max_seconds: float = 3600.0,
        first_delay: float = 1.0,
        timeout: float = 10.0,
        resolver: Resolver | None = None,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        self.secret = secret or None
        self.policy = FetchPolicy(allowed_networks=ANYWHERE if allow_private else (), timeout=timeout)
        self.max_seconds, self.first_delay, self.timeout = max_seconds, first_delay, timeout
        self.resolver = resolver
        self.on_attempt = on_attempt
        self._tasks: set[asyncio.Task[bool]] = set()

    async def check(self, url: str) -> None:
        """Refuse a callback URL at submit time (scheme, credentials, and where it resolves to now)."""
        try:
            _, connector = await pinned_connector(url, policy=self.policy, resolver=self.resolver)
        except ImageFetchError as error:
            raise WebhookRefused(_reason(error)) from None
        await connector.close()

    def send(
        self,
        url: str,
        event: str,
        job: dict[str, Any],
        *,
        retry: bool = True,
        on_done: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        """Deliver in the background; ``on_done(delivered)`` runs when it succeeded or was given up."""
        task = asyncio.create_task(self._deliver(url, event, job, retry, on_done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(
        self,
        url: str,
        event: str,
        job: dict[str, Any],
        retry: bool,
        on_done: Callable[[bool], Awaitable[None]] | None,
    ) -> bool:
        body = json.dumps({"event": event, "job": job}, separators=(",", ":")).encode()
        webhook_id = uuid.uuid4().hex
        started, delay, attempt = time.monotonic(), self.first_delay, 0
        delivered = False
        while True:
            attempt += 1
            outcome = await self._attempt(url, event, body, webhook_id)
            if self.on_attempt is not None:
                self.on_attempt(outcome)
            if outcome == "delivered":
                delivered = True
                break
            if outcome == "refused" or not retry or time.monotonic() - started + delay > self.max_seconds:
                log.warning(
                    "webhook %s for job %s: given up after %d attempts (%s)",
                    event,
                    job.get("id"),
                    attempt,
                    outcome,
                )
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
        if on_done is not None:
            await on_done(delivered)
        return delivered

    async def _attempt(self, url: str, event: str, body: bytes, webhook_id: str) -> str:
        try:
            target, connector = await pinned_connector(url, policy=self.policy, resolver=self.resolver)
        except ImageFetchError as error:
            log.warning("webhook refused: %s", _reason(error))
            return "refused"
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "imaginebot-engine-webhook/1.0",
            ID_HEADER: webhook_id,
            TIMESTAMP_HEADER: str(timestamp),
            EVENT_HEADER: event,
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
                ) as session,
                session.post(
                    target,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response,
            ):
                return "delivered" if 200 <= response.status < 300 else "failed"
        except (aiohttp.ClientError, OSError, TimeoutError):
            return "failed"


def _reason(error: ImageFetchError) -> str:
    return (
        str(error)
        .replace("The image link", "callback_url")
        .replace("Image links", "callback_url")
        .rstrip(".")
    )
