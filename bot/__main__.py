"""``python -m bot``: load settings, load the model, connect to Discord, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord
from sqlalchemy.engine import make_url

from bot.discord_endpoints import apply_discord_endpoints
from bot.engines import build_engine
from bot.lease import AnotherProcessIsActive, Ownership, ownership_for
from bot.logs import configure_logging, quiet_loaded_libraries, secrets_of
from bot.ops_server import Metrics, OpsServer
from bot.settings import Settings, SettingsError, load_settings
from bot.tiers import TierConfig, TierConfigError, load_tiers
from engine.base import Engine, EngineError
from storage.image_store import ImageStoreError
from storage.migrations import MigrationError

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger("bot")


async def run(settings: Settings, engine_factory: Callable[[Settings], Engine] = build_engine) -> int:
    """The bot process: claim the database, load the engine, serve Discord until a signal.

    ``engine_factory``: what makes the engine from the settings (``bench/soak.py`` passes a stand-in)."""
    from bot.app import ImagineBot  # imports discord.py cogs; after settings are known to be valid

    try:
        tiers = load_tiers(settings.tiers_file)
    except TierConfigError as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    try:
        await check_image_store(settings)  # before the model loads: a wrong bucket is told at once
    except ImageStoreError as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    ownership = ownership_for(settings.resolved_database_url, settings.lease_seconds)
    try:
        await ownership.claim()  # SQLite: refused at once when another process uses the file
    except AnotherProcessIsActive as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    except MigrationError as error:
        print(f"imaginebot: database: {error}", file=sys.stderr)
        return 2
    try:
        return await _run_owned(settings, tiers, ownership, ImagineBot, engine_factory)
    finally:
        await ownership.close()


async def _run_owned(
    settings: Settings,
    tiers: TierConfig,
    ownership: Ownership,
    bot_class: type[ImagineBot],
    engine_factory: Callable[[Settings], Engine],
) -> int:
    try:
        engine = engine_factory(settings)
    except EngineError as error:
        print(f"imaginebot: ENGINE: {error}", file=sys.stderr)
        return 2
    quiet_loaded_libraries()
    log.info("loading model %s on device %s (engine %s)", settings.model, settings.device, engine.name)
    try:
        await engine.start()
    except EngineError as error:
        print(f"imaginebot: could not load MODEL={settings.model}: {error}", file=sys.stderr)
        return 3
    log.info("%s", banner(settings, engine))
    metrics = Metrics()
    ops = (
        OpsServer(engine, metrics, settings.http_host, settings.http_port)
        if settings.http_port is not None
        else None
    )
    if ops is not None:
        await ops.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    bot: ImagineBot | None = None

    def stop() -> None:
        stopping.set()
        if bot is not None:
            asyncio.ensure_future(bot.close())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        if not await _until_active(ownership, stopping):
            log.info("stopped while on standby")
            return 0
        bot = bot_class(settings, engine, tiers=tiers, http_trace=metrics.discord_trace())
        if ops is not None:
            ops.bot = bot
        lost = asyncio.Event()

        async def on_lost() -> None:
            lost.set()
            assert bot is not None
            await bot.scheduler.stop(grace=0)  # another process may run these jobs now: not one step more
            await bot.close()

        ownership.watch(on_lost)
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
        except ImageStoreError as error:
            print(f"imaginebot: {error}", file=sys.stderr)
            return 2
        if lost.is_set():
            print("imaginebot: lost the bot lease to another process; stopped", file=sys.stderr)
            return 4
    finally:
        if bot is not None:
            await bot.close()  # waits for a close a signal started (jobs, database) to finish
        if ops is not None:
            await ops.close()
        await engine.close()
    log.info("stopped")
    return 0


async def _until_active(ownership: Ownership, stopping: asyncio.Event) -> bool:
    """Wait for the lease (Postgres standby) unless a signal comes first; True when this process is active."""
    active = asyncio.ensure_future(ownership.wait_until_active())
    signalled = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({active, signalled}, return_when=asyncio.FIRST_COMPLETED)
    for task in (active, signalled):
        task.cancel()
    await asyncio.gather(active, signalled, return_exceptions=True)
    if active.cancelled():
        return False
    active.result()  # raises what waiting raised
    return True


async def check_image_store(settings: Settings) -> None:
    from bot.app import image_store_for

    store = image_store_for(settings)
    await store.start()
    await store.close()


def banner(settings: Settings, engine: Engine) -> str:
    """Everything a user checks first, on one line: model, device, engines, database, images."""
    database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    kinds = ", ".join(sorted({kind for kind in engine_kinds(engine)}))
    return (
        f"imaginebot ready to connect: model {settings.model} on {settings.device}; engines: {kinds} "
        f"({engine.slots} slot{'s' if engine.slots != 1 else ''}); database: {database}; "
        f"images: {settings.image_store or settings.images_dir}"
    )


def engine_kinds(engine: Engine) -> list[str]:
    members = getattr(engine, "engines", None)
    if isinstance(members, list):
        return [kind for member in members for kind in engine_kinds(member)]
    return [type(engine).__name__.removesuffix("Engine").lower() or engine.name]


def main() -> int:
    if sys.argv[1:2] == ["sandbox"]:  # the bot with a local Discord emulator and a web channel
        from sandbox.cli import main as sandbox_main

        return sandbox_main(sys.argv[2:])
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, secrets_of(settings))
    apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
    if settings.discord_api_base:
        log.info("Discord API: %s, gateway: %s", settings.discord_api_base, settings.discord_gateway_url)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
