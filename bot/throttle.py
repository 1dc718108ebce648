"""Coalescing, rate-bounded sending: at most one send per interval, always the latest item.

Engines report progress far faster than Discord lets a message be edited. ``ThrottledSender``
keeps only the newest item, sends it no sooner than ``interval`` after the previous send, never has
two sends in flight, and on ``close()`` waits for the send in flight so that a stale progress edit
can never land after the final result.

``interval`` may be a callable (read before every send, so a shared budget can stretch it as load
grows), and ``gate`` an awaitable hook called before each send (``gate(first)``, e.g. waiting for a slot
of ``bot.edit_budget.EditBudget``); the newest item is taken only after the gate opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ThrottledSender(Generic[T]):
    def __init__(
        self,
        send: Callable[[T], Awaitable[None]],
        interval: float | Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
        first_delay: float = 0.0,
        gate: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._send = send
        self._interval: Callable[[], float] = interval if callable(interval) else _constant(interval)
        self._clock = clock
        self._gate = gate
        self._latest: T | None = None
        self._has_item = asyncio.Event()
        self._first_at = clock() + first_delay
        self._last_sent: float | None = None
        self._closed = False
        self._sending = False
        self._task = asyncio.create_task(self._run())
        self.sent = 0

    def offer(self, item: T) -> None:
        """Replace whatever is waiting with ``item``; never blocks."""
        if self._closed:
            return
        self._latest = item
        self._has_item.set()

    async def close(self) -> None:
        """Drop anything unsent and wait for a send in flight to finish."""
        self._closed = True
        self._latest = None
        self._has_item.set()
        if not self._sending:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await self._has_item.wait()
            if self._closed:
                return
            due = self._first_at if self._last_sent is None else self._last_sent + self._interval()
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed:
                return
            if self._gate is not None:
                await self._gate(self.sent == 0)
                if self._closed:
                    return
            self._has_item.clear()
            item, self._latest = self._latest, None
            if item is None:
                continue
            self._last_sent = self._clock()
            self._sending = True
            try:
                await self._send(item)
                self.sent += 1
            except Exception:  # a failed preview edit is not worth failing the job
                log.warning("throttled send failed", exc_info=True)
            finally:
                self._sending = False


def _constant(value: float) -> Callable[[], float]:
    return lambda: value
