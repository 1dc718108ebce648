"""`/imagine`: parse the prompt, acknowledge within Discord's 3 seconds, and queue the job."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.prompt import PromptError, parse_prompt
from cogs.submitting import submit_job

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
        await submit_job(
            interaction,
            lambda acknowledge: self.bot.jobs.submit_imagine(  # type: ignore[attr-defined]
                interaction.user.id, acknowledge, parsed, user_name=interaction.user.name
            ),
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ImagineCog(bot))
