"""``Sandbox``: the Discord emulator, the real bot connected to it, and the web channel, in one process.

``python -m bot sandbox`` runs it until Ctrl-C. Tests start it on port 0 with a temporary data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bot.app import ImagineBot
from bot.discord_endpoints import apply_discord_endpoints
from bot.engines import build_engine
from bot.gallery.links import LinkSigner
from bot.gallery.server import GalleryLinks
from bot.gallery.web import GalleryWeb
from bot.settings import Settings, load_settings
from cogs.gallery import GalleryCog
from engine.base import Engine
from sandbox.channel import ChannelWeb, SandboxUsers
from sandbox.discord_emulator import DiscordEmulator
from sandbox.settings import TINY_RESOLUTION, TINY_STEPS, SandboxSettings

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
"""Seconds the bot may take to connect and sync its commands (a real model may load slowly)."""


@dataclass(frozen=True)
class ModelChoice:
    model: str
    tiny: bool
    note: str


def choose_model(config: SandboxSettings) -> ModelChoice:
    """``MODEL`` when set; else the tiny noise-only model, unless a GPU is there to run the bot's default."""
    if config.model and config.model.lower() != "tiny":
        return ModelChoice(config.model, False, f"model {config.model}")
    if config.model is None and config.device != "cpu" and _cuda_available():
        default = Settings.model_fields["model"].default
        return ModelChoice(default, False, f"model {default} (GPU found; set MODEL to choose another)")
    folder = config.sandbox_data_dir.resolve() / "tiny-model"
    return ModelChoice(
        str(folder),
        True,
        "tiny built-in model with random weights: its images are NOISE, for trying the flows only. "
        "Set MODEL=<hub id or folder> for real images.",
    )


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _ensure_tiny_model(folder: Path) -> None:
    if (folder / "model_index.json").exists():
        return
    from engine.tiny import save_tiny_pipeline

    save_tiny_pipeline(folder)


class Sandbox:
    def __init__(self, config: SandboxSettings) -> None:
        self.config = config
        self.emulator = DiscordEmulator(
            bot_token="sandbox-" + secrets.token_urlsafe(16), guild_name="Sandbox"
        )
        self.users = SandboxUsers(member=self.emulator.add_user("you"), admin=self.emulator.add_user("admin"))
        self.model = choose_model(config)
        self.bot: ImagineBot | None = None
        self.engine: Engine | None = None
        self.port = config.sandbox_port
        self._bot_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = self.config.sandbox_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def bot_settings(self) -> Settings:
        emu = self.emulator
        overrides: dict[str, object] = {
            "discord_token": emu.bot_token,
            "discord_api_base": emu.api_base,
            "discord_gateway_url": emu.gateway_url,
            "discord_guild_id": emu.guild_id,
            "data_dir": self.config.sandbox_data_dir,
            "database_url": None,  # never a DATABASE_URL meant for the real bot
            "model": self.model.model,
            "device": self.config.device,
            "admin_user_ids": str(self.users.admin.id),
            "admin_role_ids": "",
            "progress_edit_interval": self.config.progress_edit_interval,
            "gallery_port": None,  # the sandbox serves the gallery on its own page
        }
        if self.model.tiny:
            overrides |= {"model_resolution": TINY_RESOLUTION, "model_steps": TINY_STEPS, "device": "cpu"}
        if self.config.model_resolution is not None:
            overrides["model_resolution"] = self.config.model_resolution
        if self.config.model_steps is not None:
            overrides["model_steps"] = self.config.model_steps
        return load_settings(**overrides)

    async def start(self) -> None:
        """Emulator, web page (so its port is known for links), model, bot; returns once the bot is ready."""
        self.config.sandbox_data_dir.mkdir(parents=True, exist_ok=True)
        await self.emulator.start()
        channel = ChannelWeb(
            self.emulator, self.users, model_note=self.model.note, noise_only=self.model.tiny
        )
        app = channel.app()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.sandbox_host, self.config.sandbox_port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the port chosen when asked for 0
        if self.model.tiny:
            await asyncio.to_thread(_ensure_tiny_model, Path(self.model.model))
        settings = self.bot_settings()
        apply_discord_endpoints(settings.discord_api_base, settings.discord_gateway_url)
        self.engine = build_engine(settings)
        await self.engine.start()
        bot = ImagineBot(settings, self.engine, guild_ready_timeout=0.1)
        self.bot = bot
        links = GalleryLinks(LinkSigner(secrets.token_hex(32)), self.url, 60)
        await bot.add_cog(GalleryCog(bot, links))
        self._bot_task = asyncio.create_task(bot.start(self.emulator.bot_token), name="sandbox-bot")
        await self._wait_until_ready()
        assert bot.database is not None
        gallery = GalleryWeb(bot.database, bot.jobs.store, signer=None, user_names=self.users.name_of)
        channel.attach_gallery(gallery)

    async def _wait_until_ready(self) -> None:
        emu = self.emulator

        async def ready() -> None:
            await emu.wait_until_ready(timeout=READY_TIMEOUT)
            await emu.wait_for_commands(["imagine"], timeout=READY_TIMEOUT)
            assert self.bot is not None
            # and discord.py's own READY (after GUILD_CREATE): closing before it leaves a failing task behind
            await asyncio.wait_for(self.bot.wait_until_ready(), READY_TIMEOUT)

        waiter = asyncio.ensure_future(ready())
        assert self._bot_task is not None
        done, _ = await asyncio.wait({waiter, self._bot_task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            self._bot_task.result()  # the bot's own error
            raise RuntimeError("the bot stopped before it was ready")
        waiter.result()

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._bot_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._bot_task
        if self.engine is not None:
            await self.engine.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.emulator.stop()
        apply_discord_endpoints(None, None)
        self.bot = self.engine = self._bot_task = self._runner = None
