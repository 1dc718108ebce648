"""One budget for every progress edit the bot makes, so many running jobs never add up to a 429.

Discord's limits that progress edits meet (see ``sandbox/discord_emulator/ratelimit.py`` for the numbers the
emulator enforces, which follow Discord's):

* Editing through an interaction token (``PATCH /webhooks/{app}/{token}/messages/...``): 5 per 2 s **per
  token**, and exempt from the bot's global limit. One token = one job's message, so the per-message
  interval (``PROGRESS_EDIT_INTERVAL``, ≥ 0.5 s keeps a spare request for the final edit) covers it.
* Editing a channel message (after the token is too old): counts against the global **50 requests/s** of
  the bot *and* a per-channel bucket of **5 per 5 s** shared by every message in that channel.

The budget therefore has three parts:

1. **Global rate** ``rate`` (``PROGRESS_EDITS_PER_SECOND``, default 20/s): every progress edit, webhook or
   channel, takes a slot. 20/s is under half of the global 50/s, so even if every progress edit were a
   channel edit, 30 requests/s remain for results, failures, new messages and button answers; and it
   bounds the bot's own upload work when hundreds of jobs run. Slots are spaced by a GCRA (virtual
   scheduling): a job's *first* progress edit may use a burst of ``burst`` slots (default 10) so that the
   first preview appears at once even when many jobs start together; later edits get no burst. In any
   window of W seconds at most ``burst + rate·W`` progress edits are granted.
2. **Per-channel rate** ``channel_rate`` (default 0.5/s) for edits of channel messages only, without
   burst: at most ``1 + 0.5·W`` per W seconds, i.e. 3 of the channel's 5 per 5 s, leaving 2 for results.
3. **Per-message interval**: ``interval()`` = max(``min_interval``, running jobs / ``rate``). As more jobs
   run, each job edits less often, so that all of them together ask for about ``rate`` edits/s and the
   slots above are granted with little queueing (fair: every job gets the same share).

Results and failures never pass through the budget: they are sent directly (they are rare, and
discord.py's own bucket tracking paces them), so they never wait behind progress edits.

Low-priority edits (colouring a result's used buttons, cogs/buttons.py) use ``acquire_spare``: they wait
until a slot would be free at once — globally and in their channel — so they never push back a progress
edit that already booked one, and after ``patience`` seconds they book like any edit, so they still go
out under sustained load.

``reserve_*`` are pure bookkeeping on an injectable clock (what unit tests drive); ``acquire`` sleeps
until the booked slot (with an injectable ``sleep``, so tests can drive the waits on the same fake clock). A booked slot that is not used (the job finished meanwhile) is simply lost, which
only makes the budget more conservative.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable

DEFAULT_RATE = 20.0
"""Progress edits per second for the whole bot (Discord: 50 requests/s global, webhook edits exempt)."""
DEFAULT_BURST = 10
"""First progress edits that may go out at once."""
DEFAULT_CHANNEL_RATE = 0.5
"""Progress edits of channel messages per second per channel (Discord: 5 per 5 s per channel)."""
DEFAULT_PATIENCE = 10.0
"""Seconds a low-priority edit waits for spare room before it books a slot like any other edit."""


class _Gcra:
    """Generic cell rate algorithm on emission times: slots ``period`` apart, ``tolerance`` early allowed."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.tat = float("-inf")  # theoretical arrival time of the next conforming slot

    def book(self, now: float, tolerance: float = 0.0) -> float:
        at = max(now, self.tat - tolerance)
        self.tat = max(self.tat, at) + self.period
        return at


class EditBudget:
    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        min_interval: float = 1.5,
        burst: int = DEFAULT_BURST,
        channel_rate: float = DEFAULT_CHANNEL_RATE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or channel_rate <= 0 or min_interval < 0 or burst < 1:
            raise ValueError("rates must be positive, min_interval ≥ 0 and burst ≥ 1")
        self.rate = rate
        self.min_interval = min_interval
        self.burst = burst
        self.channel_rate = channel_rate
        self.clock = clock
        self._sleep = sleep
        self._global = _Gcra(1.0 / rate)
        self._channels: dict[Hashable, _Gcra] = {}
        self._running: set[Hashable] = set()
        self.granted = 0

    # -- who is editing ------------------------------------------------------------------------------

    def register(self, key: Hashable) -> None:
        """A job started sending progress edits."""
        self._running.add(key)

    def unregister(self, key: Hashable) -> None:
        """The job finished (or failed); its share goes back to the others."""
        self._running.discard(key)

    @property
    def running(self) -> int:
        return len(self._running)

    def interval(self) -> float:
        """Seconds between two progress edits of one message, given how many jobs are editing now."""
        return max(self.min_interval, self.running / self.rate)

    # -- slots ---------------------------------------------------------------------------------------

    def reserve_global(self, *, first: bool = False) -> float:
        """Book a global slot; return the seconds to wait for it (0: now)."""
        now = self.clock()
        tolerance = (self.burst - 1) / self.rate if first else 0.0
        at = self._global.book(now, tolerance)
        self.granted += 1
        return max(0.0, at - now)

    def reserve_channel(self, channel: Hashable) -> float:
        """Book a slot in a channel's bucket (channel-message edits only); seconds to wait for it."""
        now = self.clock()
        gcra = self._channels.get(channel)
        if gcra is None:
            gcra = self._channels[channel] = _Gcra(1.0 / self.channel_rate)
        at = gcra.book(now)
        # forget idle channels so the table does not grow with every channel ever used
        if len(self._channels) > 1024:
            for key in [k for k, g in self._channels.items() if g.tat < now]:
                del self._channels[key]
        return max(0.0, at - now)

    def backlog(self, channel: Hashable | None = None) -> float:
        """Seconds a slot booked now would wait (globally, and in ``channel``'s bucket if given); 0: none."""
        now = self.clock()
        waits = [self._global.tat - now]
        gcra = self._channels.get(channel) if channel is not None else None
        if gcra is not None:
            waits.append(gcra.tat - now)
        return max(0.0, *waits)

    async def acquire(self, *, first: bool = False, channel: Hashable | None = None) -> None:
        """Wait for a channel slot (if the edit is of a channel message), then for a global slot.

        The two are booked one after the other so that a slow channel never holds up the global
        slots of other jobs.
        """
        if channel is not None:
            await self._wait(self.reserve_channel(channel))
        await self._wait(self.reserve_global(first=first))

    async def acquire_spare(
        self, *, channel: Hashable | None = None, patience: float = DEFAULT_PATIENCE
    ) -> None:
        """A low-priority slot: wait while other edits have booked ahead (for at most ``patience`` s),
        then book one as ``acquire`` does (no burst)."""
        deadline = self.clock() + patience
        while True:
            wait = min(self.backlog(channel), deadline - self.clock())
            if wait <= 0:
                break
            await self._sleep(wait)  # a booked slot has no event to wait on: its time is known
        await self.acquire(channel=channel)

    async def _wait(self, seconds: float) -> None:
        if seconds > 0:
            await self._sleep(seconds)
