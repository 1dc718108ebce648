"""``emu``: the shared emulator fixture with discord.py pointed at it (for the bots these tests start)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from sandbox.discord_emulator import DiscordEmulator, point_discord_py_at


@pytest_asyncio.fixture
async def emu(emulator: DiscordEmulator) -> AsyncIterator[DiscordEmulator]:
    with point_discord_py_at(emulator):
        yield emulator
