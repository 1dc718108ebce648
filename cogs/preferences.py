"""`/settings` (a member's defaults) and `/prefer suffix` (text added to every prompt). Answers are private."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.prompt import MODEL_NAME_PATTERN, PromptError, parse_prompt
from storage.models import Mode

QUALITIES = [
    app_commands.Choice(name=name, value=value)
    for name, value in ((".25", 0.25), (".5", 0.5), ("1", 1.0), ("2", 2.0))
]
MODES = [app_commands.Choice(name=mode.value, value=mode.value) for mode in Mode]
MAX_SUFFIX = 200


class PreferencesCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="settings", description="Your defaults for new jobs (leave all empty to see them)"
    )
    @app_commands.describe(
        model="Default model alias",
        stylize="Default --stylize (0-1000)",
        quality="Default --quality",
        mode="Default speed",
        remix="Edit the prompt before variations and rerolls",
        reset="Clear all defaults",
    )
    @app_commands.choices(quality=QUALITIES)
    @app_commands.choices(mode=MODES)
    async def settings(
        self,
        interaction: discord.Interaction,
        model: str | None = None,
        stylize: app_commands.Range[int, 0, 1000] | None = None,
        quality: float | None = None,
        mode: str | None = None,
        remix: bool | None = None,
        reset: bool = False,
    ) -> None:
        accounts = self.bot.accounts
        user = await accounts.get(interaction.user.id, interaction.user.name)
        preferences = {} if reset else dict(user.preferences or {})
        if model is not None:
            model = model.strip().lower()
            known = self.bot.model_aliases
            if not MODEL_NAME_PATTERN.fullmatch(model) or (known and model not in known):
                names = ", ".join(sorted(known)) if known else "the configured aliases"
                await interaction.response.send_message(f"Unknown model. Models: {names}.", ephemeral=True)
                return
            preferences["model"] = model
        if stylize is not None:
            preferences["stylize"] = stylize
        if quality is not None:
            preferences["quality"] = quality
        values: dict[str, object] = {"preferences": preferences}
        if mode is not None:
            tier = self.bot.tiers.get(user.tier)
            if mode == Mode.RELAX and not tier.relax:
                await interaction.response.send_message(
                    f"Relax mode is not part of the {tier.name} tier.", ephemeral=True
                )
                return
            values["mode"] = mode
        if remix is not None or reset:
            values["remix"] = bool(remix) and not reset
        if reset:
            values["suffix"] = ""
        user = await accounts.update(user.id, **values)
        shown = (
            ", ".join(f"{k} {v}" for k, v in sorted((user.preferences or {}).items())) or "server defaults"
        )
        await interaction.response.send_message(
            f"Your settings: {shown} · mode {user.mode} · remix {'on' if user.remix else 'off'}"
            + (f" · suffix `{discord.utils.escape_markdown(user.suffix)}`" if user.suffix else ""),
            ephemeral=True,
        )

    prefer = app_commands.Group(name="prefer", description="Your prompt preferences")

    @prefer.command(name="suffix", description="Text added to the end of every prompt (empty to clear)")
    async def suffix(self, interaction: discord.Interaction, text: str | None = None) -> None:
        text = (text or "").strip()
        if len(text) > MAX_SUFFIX:
            await interaction.response.send_message(
                f"A suffix can be at most {MAX_SUFFIX} characters.", ephemeral=True
            )
            return
        if text:
            try:
                parse_prompt(f"x {text}")  # the suffix must itself be valid prompt text
            except PromptError as error:
                await interaction.response.send_message(f"That suffix is not valid: {error}", ephemeral=True)
                return
        await self.bot.accounts.update(interaction.user.id, suffix=text)
        await interaction.response.send_message(
            f"Your suffix is now `{discord.utils.escape_markdown(text)}`."
            if text
            else "Your suffix is cleared.",
            ephemeral=True,
        )


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(PreferencesCog(bot))
