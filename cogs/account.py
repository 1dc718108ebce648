"""A member's own account: `/fast`, `/relax`, `/info` and `/cancel`. Every answer is private."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.quotas import format_duration
from storage.models import Job, Mode
from storage.states import JobState

log = logging.getLogger(__name__)

CANCEL_WAIT = 5.0
"""Seconds /cancel waits for a running job to stop at its next step before answering."""


def describe_job(job: Job, position: int | None, eta: float | None) -> str:
    prompt = discord.utils.escape_markdown(job.prompt)
    prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    if job.state == JobState.QUEUED and position is not None:
        where = f"#{position} in line" + (f", ~{format_duration(eta)}" if eta is not None else "")
    elif job.state in (JobState.DRAFT, JobState.SUBMITTED, JobState.QUEUED):
        where = "waiting"
    else:
        where = "running"
    return f"`{job.id}` {job.kind} — {prompt} — {where} ({job.mode})"


class AccountCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="fast", description="Run your new jobs in fast mode (uses your fast time)")
    async def fast(self, interaction: discord.Interaction) -> None:
        await self._set_mode(interaction, Mode.FAST)

    @app_commands.command(
        name="relax", description="Run your new jobs in relax mode (free, when the GPU is idle)"
    )
    async def relax(self, interaction: discord.Interaction) -> None:
        await self._set_mode(interaction, Mode.RELAX)

    async def _set_mode(self, interaction: discord.Interaction, mode: str) -> None:
        bot = self.bot
        user = await bot.accounts.get(interaction.user.id, interaction.user.name)
        tier = bot.tiers.get(user.tier)
        if mode == Mode.RELAX and not tier.relax:
            await interaction.response.send_message(
                f"Relax mode is not part of the {tier.name} tier.", ephemeral=True
            )
            return
        await bot.accounts.update(interaction.user.id, mode=mode)
        await interaction.response.send_message(
            f"Done! Your new jobs run in **{mode}** mode. Add `--{Mode.FAST if mode == Mode.RELAX else Mode.RELAX}` to a prompt "
            "to override it once.",
            ephemeral=True,
        )

    @app_commands.command(
        name="info", description="Your tier, fast time left, and your queued and running jobs"
    )
    async def info(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        status = await bot.quotas.status(interaction.user.id)
        jobs = await bot.jobs.repo.unfinished(user_id=interaction.user.id)
        lines = [
            "**Your imaginebot info**",
            f"Tier: **{status.tier.name}** · Mode: **{status.mode}**",
            f"Fast time: {format_duration(status.used_seconds)} used, {format_duration(status.left_seconds)} left of "
            f"{format_duration(status.tier.fast_seconds)} · resets <t:{int(status.resets_at.timestamp())}:R>",
            f"Jobs today: {status.jobs_today} of {status.tier.daily_jobs} · "
            f"waiting or running: {status.waiting + status.running} of {status.tier.max_queued}",
        ]
        if jobs:
            lines.append("Your jobs:")
            for job in jobs[:10]:
                position = bot.scheduler.position(job.id)
                lines.append("• " + describe_job(job, position, bot.jobs.eta_seconds(position)))
        else:
            lines.append("You have no queued or running jobs.")
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your queued or running jobs")
    @app_commands.describe(job_id="The job to cancel (see /info); leave empty to cancel all of yours")
    async def cancel(self, interaction: discord.Interaction, job_id: str | None = None) -> None:
        bot = self.bot
        jobs = await bot.jobs.repo.unfinished(user_id=interaction.user.id)
        if job_id is not None:
            jobs = [job for job in jobs if job.id == job_id.strip().lower()]
            if not jobs:
                await interaction.response.send_message(
                    "You have no queued or running job with that id (see /info).", ephemeral=True
                )
                return
        if not jobs:
            await interaction.response.send_message("You have no queued or running jobs.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        ended = await cancel_jobs(bot, [job.id for job in jobs])
        finishing = len(jobs) - ended
        text = f"Canceled {ended} job{'s' if ended != 1 else ''}."
        if finishing:
            text += (
                f" {finishing} {'was' if finishing == 1 else 'were'} already finishing and will be posted."
            )
        await interaction.edit_original_response(content=text)


async def cancel_jobs(bot: ImagineBot, job_ids: list[str]) -> int:
    """Cancel jobs and wait (briefly) for running ones to stop; returns how many ended CANCELED."""
    for job_id in job_ids:
        await bot.jobs.cancel(job_id)

    async def all_settled() -> list[Job]:
        return [await bot.jobs.repo.get(job_id) for job_id in job_ids]

    jobs = await all_settled()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WAIT
    while any(job.state == JobState.PROCESSING for job in jobs) and loop.time() < deadline:
        await asyncio.sleep(0.1)
        jobs = await all_settled()
    return sum(1 for job in jobs if job.state == JobState.CANCELED)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(AccountCog(bot))
