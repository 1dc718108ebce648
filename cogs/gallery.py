"""`/gallery`: a private, signed, expiring link to your finished results (admins also get the queue page).

Loaded with the other cogs, it adds nothing unless ``GALLERY_PORT`` is set; then it also runs the gallery's
web server for as long as the bot runs. The sandbox adds ``GalleryCog`` itself, with links to its own page.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.gallery.links import LinkSigner
from bot.gallery.server import GalleryLinks, GalleryServer
from bot.gallery.web import GalleryWeb


class GalleryCog(commands.Cog):
    def __init__(self, bot: ImagineBot, links: GalleryLinks, server: GalleryServer | None = None) -> None:
        self.bot = bot
        self.links = links
        self.server = server

    async def cog_load(self) -> None:
        if self.server is not None:
            await self.server.start()
            if not self.links.base_url:  # no GALLERY_URL: links point at where the server listens
                self.links.base_url = f"http://{self.server.host}:{self.server.port}"

    async def cog_unload(self) -> None:
        if self.server is not None:
            await self.server.stop()

    @app_commands.command(name="gallery", description="A private link to your finished results")
    async def gallery(self, interaction: discord.Interaction) -> None:
        is_admin = self.bot.is_admin(interaction.user)
        await interaction.response.send_message(
            self.links.answer(interaction.user.id, is_admin=is_admin), ephemeral=True
        )


async def setup(bot: ImagineBot) -> None:
    settings = bot.settings
    if settings.gallery_port is None or settings.gallery_secret is None or bot.database is None:
        return
    signer = LinkSigner(settings.gallery_secret.get_secret_value())
    web = GalleryWeb(bot.database, bot.jobs.store, signer=signer, now=lambda: bot.now().timestamp())
    server = GalleryServer(web, settings.gallery_host, settings.gallery_port)
    links = GalleryLinks(
        signer, settings.gallery_url or "", settings.gallery_link_minutes, now=lambda: bot.now().timestamp()
    )
    await bot.add_cog(GalleryCog(bot, links, server))
