"""``python -m bot``: load settings, load the model, connect to Discord, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import discord

from bot.discord_endpoints import apply_discord_endpoints
from bot.engines import build_engine
from bot.settings import Settings, SettingsError, load_settings
from bot.tiers import TierConfigError, load_tiers
from engine.base import EngineError
from storage.migrations import MigrationError

log = logging.getLogger("bot")


async def run(settings: Settings) -> int:
    from bot.app import ImagineBot  # imports discord.py cogs; after settings are known to be valid

    try:
        tiers = load_tiers(settings.tiers_file)
    except TierConfigError as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    try:
        engine = build_engine(settings)
    except EngineError as error:
        print(f"imaginebot: ENGINE: {error}", file=sys.stderr)
        return 2
    log.info("loading model %s on device %s (engine %s)", settings.model, settings.device, engine.name)
    try:
        await engine.start()
    except EngineError as error:
        print(f"imaginebot: could not load MODEL={settings.model}: {error}", file=sys.stderr)
        return 3
    bot = ImagineBot(settings, engine, tiers=tiers)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))
    try:
        async with bot:
            await bot.start(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        print(
            "imaginebot: Discord rejected DISCORD_TOKEN; reset the token in the developer portal.",
            file=sys.stderr,
        )
        return 2
    except MigrationError as error:
        print(f"imaginebot: database: {error}", file=sys.stderr)
        return 2
    finally:
        await bot.close()  # waits for a close a signal started (jobs, database) to finish
        await engine.close()
    log.info("stopped")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["sandbox"]:  # the bot with a local Discord emulator and a web channel
        from sandbox.cli import main as sandbox_main

        return sandbox_main(sys.argv[2:])
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("discord").setLevel(logging.WARNING)
    apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
    if settings.discord_api_base:
        log.info("Discord API: %s, gateway: %s", settings.discord_api_base, settings.discord_gateway_url)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
