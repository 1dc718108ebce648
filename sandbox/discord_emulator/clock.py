"""The emulator's clock and time-based snowflake ids.

The clock is real time plus an offset that tests move forward with ``advance``; every deadline the emulator
enforces (3-second acknowledgement, 15-minute tokens, rate-limit windows) and every snowflake uses it.
"""

from __future__ import annotations

import datetime
import time

DISCORD_EPOCH_MS = 1_420_070_400_000  # 2015-01-01T00:00:00Z


class EmulatorClock:
    """Wall-clock time in seconds plus an adjustable offset."""

    def __init__(self) -> None:
        self.offset: float = 0.0

    def now(self) -> float:
        """Current emulator time, seconds since the Unix epoch."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward (tests use this for deadlines and token expiry)."""
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        self.offset += seconds

    def iso(self, at: float | None = None) -> str:
        """ISO-8601 timestamp as Discord writes it."""
        ts = self.now() if at is None else at
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


class SnowflakeFactory:
    """Time-based, strictly increasing Discord snowflakes drawn from an ``EmulatorClock``."""

    def __init__(self, clock: EmulatorClock, worker_id: int = 1, process_id: int = 0) -> None:
        self._clock = clock
        self._prefix = ((worker_id & 0x1F) << 17) | ((process_id & 0x1F) << 12)
        self._last = 0

    def next(self) -> int:
        ms = int(self._clock.now() * 1000) - DISCORD_EPOCH_MS
        candidate = (ms << 22) | self._prefix
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return candidate


def snowflake_time(snowflake: int) -> float:
    """Unix time (seconds) encoded in a snowflake."""
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000.0
