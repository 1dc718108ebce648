"""Point discord.py at another Discord API (a proxy, or the test emulator).

discord.py has no base-URL option; these two class attributes decide where it connects and are
read at request time, so they must be set before ``login()``.
"""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl

DEFAULT_API_BASE = discord.http.Route.BASE
DEFAULT_GATEWAY = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


def apply_discord_endpoints(api_base: str | None, gateway_url: str | None) -> None:
    """Use ``api_base`` (e.g. ``http://127.0.0.1:8080/api/v10``) and ``gateway_url`` when given."""
    discord.http.Route.BASE = api_base.rstrip("/") if api_base else DEFAULT_API_BASE
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = (
        yarl.URL(gateway_url) if gateway_url else DEFAULT_GATEWAY
    )
