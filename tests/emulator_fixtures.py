"""pytest fixture ``emulator``: a started Discord API emulator, stopped after the test.

Enabled by ``pytest_plugins = ["tests.emulator_fixtures"]`` in ``tests/conftest.py``. It does not call
``assert_clean()`` (each test decides).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from sandbox.discord_emulator import DiscordEmulator


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator, stopped after the test."""
    emu = DiscordEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
