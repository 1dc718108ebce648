"""pytest fixtures and helpers: ``emulator`` and ``point_discord_py_at``.

Enable with ``pytest_plugins = ["tests.discord_emulator.fixtures"]`` in ``tests/conftest.py``. The fixture starts and
stops the emulator; it does not call ``assert_clean()`` (each test decides).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest_asyncio

if TYPE_CHECKING:
    from .emulator import DiscordEmulator


@contextlib.contextmanager
def point_discord_py_at(emu: DiscordEmulator) -> Iterator[None]:
    """Set ``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` to the emulator; restore after."""
    import discord.gateway
    import discord.http
    import yarl

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = emu.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


def bot_environment(emu: DiscordEmulator) -> dict[str, str]:
    """Environment for running the bot as a subprocess against the emulator."""
    return os.environ | {
        "DISCORD_API_BASE": emu.api_base,
        "DISCORD_GATEWAY_URL": emu.gateway_url,
        "DISCORD_TOKEN": emu.bot_token,
    }


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator, stopped after the test."""
    from .emulator import DiscordEmulator

    emu = DiscordEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
