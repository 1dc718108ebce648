"""``DiscordEmulator.add_listener``: observers (the sandbox's web channel) hear every state change."""

from __future__ import annotations

import aiohttp

from sandbox.discord_emulator import DiscordEmulator


async def test_listeners_hear_changes_until_removed(emulator: DiscordEmulator) -> None:
    heard: list[int] = []

    def listener() -> None:
        heard.append(len(emulator.requests))

    emulator.add_listener(listener)
    emulator.advance_clock(1)
    assert heard == [0]
    headers = {"Authorization": f"Bot {emulator.bot_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.api_base + "/users/@me", headers=headers),
    ):
        pass
    assert heard[-1] == 1  # told after the request was recorded
    calls = len(heard)
    emulator.remove_listener(listener)
    emulator.remove_listener(listener)  # removing twice is harmless
    emulator.advance_clock(1)
    assert len(heard) == calls
