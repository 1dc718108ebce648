"""``RemoteEngine``: the Engine interface over HTTP to our engine server (``python -m engine serve``).

``generate`` submits the request (``POST /images/jobs`` with an ``Idempotency-Key``, retried on connection
errors so a retry never generates twice), follows the job over the WebSocket event stream (falling back
to polling ``GET /images/jobs/{id}`` when the socket fails), reports each step to ``on_progress``, sends
``DELETE`` when the ``CancelToken`` is set, and downloads the result PNGs. A server that cannot be
reached, drops the job, or reports ``engine_unavailable`` raises ``EngineUnavailable`` — the signal for
``EnginePool`` to resubmit the same request (same seed, same images) elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
import uuid
from typing import Any

import aiohttp
from PIL import Image
from pydantic import ValidationError

from engine.base import (
    ENGINE_SECONDS,
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineFlagged,
    EngineOutOfMemory,
    EngineUnavailable,
    GenerationRequest,
    ProgressCallback,
    ProgressUpdate,
)
from engine.wire import ErrorBody, JobEvent, JobRequest, JobSnapshot

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")


def request_to_json(request: GenerationRequest) -> dict[str, Any]:
    """The wire body for ``request`` (``engine.wire.JobRequest``, the schema the server validates with)."""
    return JobRequest.from_generation(request).wire()


class RemoteEngine:
    """One engine server. ``slots`` defaults to the server's own (read from ``/healthz`` at start)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        name: str | None = None,
        slots: int | None = None,
        poll_interval: float = 0.5,
        lost_after: float = 3.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or self.url.split("://", 1)[-1]
        self._token = token
        self._fixed_slots = slots
        self.slots = slots or 1
        self.poll_interval = poll_interval
        self.lost_after = lost_after
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"RemoteEngine({self.url!r})"  # never the token

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the server is up and learn its slots; raises ``EngineUnavailable`` when it is not ready."""
        health = await self._health()
        if health is None or health.get("status") != "ok":
            raise EngineUnavailable(f"engine server {self.name} is not ready")
        if self._fixed_slots is None:
            self.slots = max(1, int(health.get("slots", 1)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> bool:
        health = await self._health()
        return health is not None and health.get("status") == "ok"

    async def _health(self) -> dict[str, Any] | None:
        try:
            async with self._http().get(
                self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(headers=headers)
            self._session_loop = loop
        return self._session

    # -- generate --------------------------------------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        if cancel is not None and cancel.cancelled:
            raise EngineCancelled("cancelled")
        job_id = await self._submit(request_to_json(request))
        watcher = asyncio.ensure_future(self._watch_cancel(job_id, cancel)) if cancel is not None else None
        try:
            snapshot = await self._follow(job_id, on_progress)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._delete(job_id))
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        return await self._result(snapshot)

    async def _submit(self, body: dict[str, Any]) -> str:
        key = uuid.uuid4().hex
        last: Exception | None = None
        for attempt in range(3):
            try:
                async with self._http().post(
                    self.url + "/images/jobs",
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=aiohttp.ClientTimeout(total=self.request_timeout),
                ) as response:
                    data = await _json(response)
                    if response.status in (200, 202):
                        return str(data["id"])
                    raise _error_from(data, response.status)
            except (aiohttp.ClientError, TimeoutError) as error:
                last = error
                await asyncio.sleep(0.2 * (attempt + 1))
        raise EngineUnavailable(f"engine server {self.name} cannot be reached") from last

    async def _follow(self, job_id: str, on_progress: ProgressCallback | None) -> JobSnapshot:
        """Until the job is terminal: WebSocket events, then polling if the socket fails."""
        last_step = 0

        def progress(snapshot: JobSnapshot, preview: bytes | None) -> None:
            nonlocal last_step
            step, total = snapshot.step, snapshot.total
            if on_progress is not None and step > 0 and (step != last_step or preview is not None):
                on_progress(ProgressUpdate(step=step, total=total, preview=preview))
            last_step = step

        try:
            async with self._http().ws_connect(
                f"{self.url}/images/jobs/{job_id}/events",
                heartbeat=10,
                timeout=aiohttp.ClientWSTimeout(ws_close=2),
            ) as socket:
                async for message in socket:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = JobEvent.model_validate_json(message.data)
                    preview = base64.b64decode(event.preview) if event.preview else None
                    if event.type == "progress":
                        progress(event, preview)
                    if event.state in TERMINAL:
                        return event
        except (aiohttp.ClientError, TimeoutError, ValueError, ValidationError) as error:
            log.info("engine %s: event stream for %s failed (%r); polling", self.name, job_id, error)
        # polling fallback (also after a socket closed early)
        failing_since: float | None = None
        while True:
            try:
                async with self._http().get(
                    f"{self.url}/images/jobs/{job_id}", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 404:
                        raise EngineUnavailable(f"engine server {self.name} lost the job")
                    data = await _json(response)
                    if response.status != 200:
                        raise _error_from(data, response.status)
                    snapshot = _snapshot(data)
                failing_since = None
                progress(snapshot, None)
                if snapshot.state in TERMINAL:
                    return snapshot
            except (aiohttp.ClientError, TimeoutError) as error:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.lost_after:
                    raise EngineUnavailable(f"engine server {self.name} went away mid-job") from error
            await asyncio.sleep(self.poll_interval)

    async def _result(self, snapshot: JobSnapshot) -> list[Image.Image]:
        if snapshot.state == "CANCELED":
            raise EngineCancelled("cancelled")
        if snapshot.state != "SUCCEEDED":
            raise _error_from(snapshot.model_dump(mode="json"), 200)
        images = []
        try:
            for link in snapshot.images:
                async with self._http().get(
                    self.url + link, timeout=aiohttp.ClientTimeout(total=self.request_timeout)
                ) as response:
                    if response.status != 200:
                        raise EngineUnavailable(f"engine server {self.name} lost a result image")
                    data = await response.read()
                image = Image.open(io.BytesIO(data))
                image.load()
                images.append(image.convert("RGB"))
            if snapshot.engine_seconds is not None:
                for result in images:  # the server's share for this job, for the bot's charge
                    result.info[ENGINE_SECONDS] = snapshot.engine_seconds
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineUnavailable(f"engine server {self.name} went away while sending results") from error
        except OSError as error:
            raise EngineError("the engine server sent an unreadable image") from error
        return images

    async def _watch_cancel(self, job_id: str, cancel: CancelToken) -> None:
        while not cancel.cancelled:  # noqa: ASYNC110 (a thread-safe token, not an asyncio.Event)
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await self._delete(job_id)

    async def _delete(self, job_id: str) -> None:
        async with self._http().delete(
            f"{self.url}/images/jobs/{job_id}", timeout=aiohttp.ClientTimeout(total=5)
        ):
            pass


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await response.json(content_type=None)
    except ValueError:
        raise EngineUnavailable(f"engine server answered {response.status} with no JSON") from None
    if not isinstance(data, dict):
        raise EngineUnavailable("engine server answered with garbage")
    return data


def _snapshot(data: dict[str, Any]) -> JobSnapshot:
    try:
        return JobSnapshot.model_validate(data)
    except ValidationError:
        raise EngineUnavailable("engine server answered with garbage") from None


def _error_from(data: dict[str, Any], status: int) -> EngineError:
    try:
        error = ErrorBody.model_validate(data).error
        code, message = error.code, error.message
    except ValidationError:
        code, message = "", "the engine failed"
    if code == "out_of_memory":
        return EngineOutOfMemory(message)
    if code == "canceled":
        return EngineCancelled(message)
    if code == "flagged":  # the safety checker refused the result: not retried on another engine
        return EngineFlagged(message)
    if code in ("engine_unavailable", "internal_error") or status >= 500 or status == 401:
        if status == 401:
            message = "the engine server refused our token"
        return EngineUnavailable(message)
    return EngineError(message)
