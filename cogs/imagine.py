"""`/imagine`: parse the prompt, acknowledge within Discord's 3 seconds, and queue the job."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import Origin
from bot.prompt import PromptError, parse_prompt

log = logging.getLogger(__name__)


class ImagineCog(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Create four images from a text prompt")
    @app_commands.describe(prompt="What to draw, then parameters such as --ar 3:2 --seed 42 --no text")
    async def imagine(self, interaction: discord.Interaction, prompt: str) -> None:
        try:
            parsed = parse_prompt(prompt)
        except PromptError as error:
            await interaction.response.send_message(str(error), ephemeral=True)
            return
        response = await interaction.response.defer(thinking=True)
        origin = Origin(
            channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id,
            application_id=interaction.application_id,
            interaction_token=interaction.token,
            message_id=response.message_id if response else None,
        )
        try:
            await self.bot.jobs.submit_imagine(  # type: ignore[attr-defined]
                interaction.user.id, origin, parsed, user_name=interaction.user.name
            )
        except Exception:
            log.exception("/imagine: could not queue a job")
            await interaction.edit_original_response(
                content="Sorry, your job could not be queued. Try again."
            )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ImagineCog(bot))
