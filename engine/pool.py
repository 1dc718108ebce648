"""``EnginePool``: several engines (local and/or remote) behind the one Engine interface.

Each request goes to the least-loaded engine in rotation (in-flight jobs / slots). When an engine raises
``EngineUnavailable`` mid-job, the same request (same seed, so the same images) is resubmitted to another
engine. Any other ``EngineError`` (out of memory, ``EngineFlagged`` from a safety checker, a bad request)
belongs to the request, not the engine: it reaches the caller as is, with no resubmission and without
counting as a failure of the engine. An engine that fails ``max_failures`` times in a row, or whose health
check fails right after a failure, is taken out of rotation; a background check every ``health_interval``
seconds puts it back once its ``health()`` passes. ``status()`` reports each engine's health, load and
recent speed.

Engines may do different operations (``supported_operations``: a ComfyUI backend without an inpainting
workflow cannot Zoom Out): a request goes only to an engine that can do it, and a request no engine of the
pool can do raises ``EngineUnsupported`` at once (the bot refuses such a job before it is charged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from PIL import Image

from engine.base import (
    CancelToken,
    Engine,
    EngineError,
    EngineUnavailable,
    EngineUnsupported,
    GenerationRequest,
    Operation,
    ProgressCallback,
    supported_operations,
    unsupported_message,
)

log = logging.getLogger(__name__)


@dataclass
class EngineStatus:
    name: str
    kind: str = "local"  # local, remote, a1111, comfyui, replicate
    healthy: bool = True
    in_rotation: bool = True
    load: int = 0  # jobs in flight
    slots: int = 1
    done: int = 0
    failures: int = 0  # in a row
    total_failures: int = 0
    seconds_per_image: float | None = None  # exponential moving average
    last_error: str | None = None
    recent: list[float] = field(default_factory=list, repr=False)


class EnginePool:
    def __init__(
        self,
        engines: list[Engine],
        *,
        name: str = "pool",
        max_failures: int = 2,
        health_interval: float = 5.0,
        wait_for_engine: float = 30.0,
    ) -> None:
        if not engines:
            raise ValueError("a pool needs at least one engine")
        self.name = name
        self.engines = list(engines)
        self.max_failures = max_failures
        self.health_interval = health_interval
        self.wait_for_engine = wait_for_engine
        self._status = {
            id(e): EngineStatus(name=e.name, kind=engine_kind(e), slots=e.slots) for e in self.engines
        }
        self._health_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    @property
    def slots(self) -> int:
        return sum(max(1, e.slots) for e in self.engines)

    @property
    def operations(self) -> frozenset[Operation]:
        """What at least one engine of the pool can do."""
        return frozenset().union(*(supported_operations(e) for e in self.engines))

    async def start(self) -> None:
        """Start every engine; ones that fail start out of rotation (the health check brings them back)."""
        results = await asyncio.gather(*(e.start() for e in self.engines), return_exceptions=True)
        for engine, result in zip(self.engines, results, strict=True):
            status = self._status[id(engine)]
            status.slots = engine.slots
            if isinstance(result, BaseException):
                log.warning("engine %s did not start: %s", engine.name, result)
                status.healthy = status.in_rotation = False
                status.last_error = str(result)
        if not any(s.in_rotation for s in self._status.values()):
            raise EngineError(
                "no engine of the pool could start: "
                + "; ".join(f"{s.name}: {s.last_error}" for s in self._status.values())
            )
        self._health_task = asyncio.create_task(self._health_loop(), name="engine-pool-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(BaseException):
                await self._health_task
            self._health_task = None
        await asyncio.gather(*(e.close() for e in self.engines), return_exceptions=True)

    def status(self) -> list[EngineStatus]:
        """A snapshot per engine, in configuration order (for ``/admin engines``)."""
        return [EngineStatus(**{**vars(self._status[id(e)]), "recent": []}) for e in self.engines]

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        if request.operation not in self.operations:
            raise EngineUnsupported(unsupported_message(request.operation))
        tried: list[Engine] = []
        last_error: EngineError | None = None
        for _ in range(len(self.engines) + 2):
            engine = await self._pick(tried, request.operation)
            if engine is None:
                break
            status = self._status[id(engine)]
            status.load += 1
            started = time.monotonic()
            try:
                images = await engine.generate(request, on_progress, cancel)
            except EngineUnavailable as error:
                last_error = error
                tried.append(engine)
                log.warning(
                    "engine %s failed mid-job (%s); resubmitting seed=%s elsewhere",
                    engine.name,
                    error,
                    request.seed,
                )
                await self._failed(engine, str(error))
                continue
            finally:
                status.load -= 1
                self._notify()
            self._succeeded(engine, len(images), time.monotonic() - started)
            return images
        raise EngineUnavailable(
            "no image engine is available right now" + (f" ({last_error})" if last_error else "")
        )

    # -- dispatch and health --------------------------------------------------------------------------

    async def _pick(self, tried: list[Engine], operation: Operation) -> Engine | None:
        deadline = time.monotonic() + self.wait_for_engine
        able = [e for e in self.engines if operation in supported_operations(e)]
        while True:
            candidates = [e for e in able if self._status[id(e)].in_rotation and e not in tried]
            if not candidates:  # every engine in rotation was tried: allow a second try on them
                candidates = [e for e in able if self._status[id(e)].in_rotation]
            if candidates:
                return min(
                    candidates,
                    key=lambda e: (
                        self._status[id(e)].load / max(1, e.slots),
                        self._status[id(e)].load,
                        self.engines.index(e),
                    ),
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, self.health_interval))

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _succeeded(self, engine: Engine, images: int, seconds: float) -> None:
        status = self._status[id(engine)]
        status.done += 1
        status.failures = 0
        status.healthy = True
        if images:
            per_image = seconds / images
            status.seconds_per_image = (
                per_image
                if status.seconds_per_image is None
                else 0.7 * status.seconds_per_image + 0.3 * per_image
            )

    async def _failed(self, engine: Engine, error: str) -> None:
        status = self._status[id(engine)]
        status.failures += 1
        status.total_failures += 1
        status.last_error = error
        healthy = await _health(engine)
        status.healthy = healthy
        if status.in_rotation and (not healthy or status.failures >= self.max_failures):
            status.in_rotation = False
            log.warning("engine %s taken out of rotation (%s)", engine.name, error)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_health()

    async def check_health(self) -> None:
        """Probe every engine once: failing ones leave the rotation, recovered ones rejoin it."""
        results = await asyncio.gather(*(_health(e) for e in self.engines))
        for engine, healthy in zip(self.engines, results, strict=True):
            status = self._status[id(engine)]
            status.healthy = healthy
            if healthy and not status.in_rotation:
                with contextlib.suppress(Exception):
                    await engine.start()  # remote: re-learn slots
                status.slots = engine.slots
                status.in_rotation, status.failures = True, 0
                log.info("engine %s back in rotation", engine.name)
                self._notify()
            elif not healthy and status.in_rotation:
                status.in_rotation = False
                log.warning("engine %s failed its health check; out of rotation", engine.name)


def engine_kind(engine: Engine) -> str:
    """``local``, ``remote`` (our engine server) or the adapter's ``kind`` (a1111, comfyui, replicate)."""
    kind = getattr(engine, "kind", None)
    if isinstance(kind, str):
        return kind
    return "remote" if hasattr(engine, "url") else "local"


async def _health(engine: Engine) -> bool:
    check = getattr(engine, "health", None)
    if check is None:
        return True  # in-process engines are as healthy as this process
    try:
        return bool(await check())
    except Exception:
        return False
