"""`/admin ...`: tiers, quotas, bans, the queue, statistics and the audit log.

Hidden from members by default permissions (Manage Server) *and* checked on every call against
``ADMIN_USER_IDS`` / ``ADMIN_ROLE_IDS``: a server owner may grant the command to others in Discord's
integration settings, but only configured admins can make it do anything. Every call is audited.
"""

from __future__ import annotations

import logging
import statistics
from datetime import UTC
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.quotas import format_duration
from cogs.account import cancel_jobs, describe_job
from storage.models import as_utc

log = logging.getLogger(__name__)

REFUSAL = "Only the bot's admins can use /admin."
MAX_LISTED = 15


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class AdminCog(commands.GroupCog, group_name="admin", group_description="Manage imaginebot (admins only)"):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:  # type: ignore[override]
        if self.bot.is_admin(interaction.user):
            return True
        await interaction.response.send_message(REFUSAL, ephemeral=True)
        log.info("refused /admin for user %s", interaction.user.id)
        return False

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.CheckFailure):
            return  # already answered by interaction_check
        log.error("/admin failed", exc_info=error)
        text = "That admin command failed; nothing was changed."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    async def _audit(
        self, interaction: discord.Interaction, action: str, target: str = "", **details: Any
    ) -> None:
        await self.bot.audit.record(interaction.user.id, action, target, **details)

    async def _reply(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(text[:2000], ephemeral=True)

    @app_commands.command(name="tier", description="Set a member's tier")
    @app_commands.describe(user="The member", tier="A tier name from the tiers file")
    async def tier(self, interaction: discord.Interaction, user: discord.User, tier: str) -> None:
        tiers = self.bot.tiers
        if tier not in tiers.tiers:
            await self._reply(
                interaction,
                f"Unknown tier `{discord.utils.escape_markdown(tier[:40])}`. "
                f"Tiers: {', '.join(tiers.tiers)}.",
            )
            return
        await self.bot.accounts.update(user.id, tier=tier)
        await self._audit(interaction, "tier", str(user.id), tier=tier)
        await self._reply(interaction, f"{user.mention} is now on the **{tier}** tier.")

    @app_commands.command(name="quota", description="Grant extra fast time, or reset this period's usage")
    @app_commands.describe(user="The member", action="grant or reset", minutes="Minutes to grant")
    @app_commands.choices(
        action=[
            app_commands.Choice(name="grant", value="grant"),
            app_commands.Choice(name="reset", value="reset"),
        ]
    )
    async def quota(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        action: str,
        minutes: app_commands.Range[float, 0, 100_000] = 0.0,
    ) -> None:
        quotas = self.bot.quotas
        if action == "grant":
            if minutes <= 0:
                await self._reply(interaction, "Give the minutes to grant, e.g. `minutes: 30`.")
                return
            await quotas.grant(user.id, minutes * 60, interaction.user.id)
            text = f"Granted {format_duration(minutes * 60)} of fast time to {user.mention}."
        else:
            used = await quotas.reset(user.id, interaction.user.id)
            text = f"Reset {user.mention}'s usage this period (was {format_duration(used)})."
        await self._audit(interaction, f"quota {action}", str(user.id), minutes=minutes)
        await self._reply(interaction, text)

    @app_commands.command(name="ban", description="Stop a member from using the bot")
    async def ban(
        self, interaction: discord.Interaction, user: discord.User, reason: str | None = None
    ) -> None:
        await self.bot.accounts.update(user.id, banned=True, ban_reason=(reason or "")[:200] or None)
        await self._audit(interaction, "ban", str(user.id), reason=reason)
        await self._reply(interaction, f"{user.mention} is banned from imaginebot.")

    @app_commands.command(name="unban", description="Let a banned member use the bot again")
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        await self.bot.accounts.update(user.id, banned=False, ban_reason=None)
        await self._audit(interaction, "unban", str(user.id))
        await self._reply(interaction, f"{user.mention} may use imaginebot again.")

    @app_commands.command(name="queue", description="List waiting and running jobs with their positions")
    async def queue(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        jobs = await bot.jobs.repo.unfinished()
        scheduler = bot.scheduler
        jobs = sorted(jobs, key=lambda job: scheduler.position(job.id) or 0)
        head = f"**Queue** — {scheduler.waiting} waiting, {len(scheduler.running)} running"
        head += " · ⏸️ dispatch paused" if scheduler.paused else ""
        lines = [head]
        for job in jobs[:MAX_LISTED]:
            position = scheduler.position(job.id)
            lines.append(
                f"• <@{job.user_id}> [{job.tier}] "
                + describe_job(job, position, bot.jobs.eta_seconds(position))
            )
        if len(jobs) > MAX_LISTED:
            lines.append(f"… and {len(jobs) - MAX_LISTED} more")
        await self._audit(interaction, "queue")
        await self._reply(interaction, "\n".join(lines))

    @app_commands.command(name="cancel", description="Cancel any job")
    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        job = await self.bot.jobs.repo.find(job_id.strip().lower())
        if job is None:
            await self._reply(interaction, "No job with that id.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        ended = await cancel_jobs(self.bot, [job.id])
        await self._audit(interaction, "cancel", job.id, owner=job.user_id)
        await interaction.edit_original_response(
            content=f"Canceled `{job.id}`." if ended else f"`{job.id}` had already finished or is finishing."
        )

    @app_commands.command(name="pause", description="Stop starting new jobs (running ones finish)")
    async def pause(self, interaction: discord.Interaction) -> None:
        self.bot.scheduler.pause()
        await self._audit(interaction, "pause")
        await self._reply(interaction, "Dispatch paused: queued jobs wait until `/admin resume`.")

    @app_commands.command(name="resume", description="Start dispatching queued jobs again")
    async def resume(self, interaction: discord.Interaction) -> None:
        self.bot.scheduler.resume()
        await self._audit(interaction, "resume")
        await self._reply(interaction, "Dispatch resumed.")

    @app_commands.command(
        name="stats", description="Jobs per state and tier, engine time and queue waits today"
    )
    async def stats(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        stats = bot.stats
        today = bot.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        by_state = await stats.jobs_by("state")
        by_tier = await stats.jobs_by("tier", since=today)
        waits = sorted(await stats.queue_waits(today))
        lines = [
            "**imaginebot stats** (today = since 00:00 UTC)",
            "Jobs by state: " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none"),
            "Jobs today by tier: "
            + (", ".join(f"{k or '?'} {v}" for k, v in sorted(by_tier.items())) or "none"),
            f"Engine time today: {format_duration(await stats.engine_seconds(today))}",
            f"Queue: {bot.scheduler.waiting} waiting, {len(bot.scheduler.running)} running"
            + (" (paused)" if bot.scheduler.paused else ""),
            "Wait in queue today: " + (_percentiles(waits) if waits else "no jobs started yet"),
        ]
        await self._audit(interaction, "stats")
        await self._reply(interaction, "\n".join(lines))

    @app_commands.command(name="banned-words", description="List, add or remove banned prompt words")
    @app_commands.choices(action=[app_commands.Choice(name=a, value=a) for a in ("list", "add", "remove")])
    async def banned_words(
        self, interaction: discord.Interaction, action: str, term: str | None = None
    ) -> None:
        moderator = self.bot.moderator
        if action == "list":
            terms = moderator.words.terms
            await self._audit(interaction, "banned-words list")
            await self._reply(interaction, "Banned words: " + (", ".join(f"`{t}`" for t in terms) or "none"))
            return
        term = (term or "").strip()
        if not term or len(term) > 100:
            await self._reply(interaction, "Give the term (1–100 characters).")
            return
        changed = await (
            moderator.add(term, interaction.user.id) if action == "add" else moderator.remove(term)
        )
        await self._audit(interaction, f"banned-words {action}", term)
        verb = "added" if action == "add" else "removed"
        await self._reply(interaction, f"`{term}` {verb}." if changed else f"`{term}` was already {verb}.")

    @app_commands.command(name="engines", description="Each engine's health, load and recent speed")
    async def engines(self, interaction: discord.Interaction) -> None:
        engine = self.bot.engine
        statuses = engine.status() if hasattr(engine, "status") else None
        if statuses:
            lines = ["**Engines**"] + [_engine_line(status) for status in statuses]
        else:
            stats = getattr(engine, "stats", None)
            lines = [
                "**Engines**",
                f"• {engine.name}: local, {engine.slots} slot(s)" + (f", {stats}" if stats else ""),
            ]
        await self._audit(interaction, "engines")
        await self._reply(interaction, "\n".join(lines))

    @app_commands.command(name="audit", description="Recent admin actions")
    async def audit(
        self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 50] = 10
    ) -> None:
        entries = await self.bot.audit.recent(count)
        lines = ["**Recent admin actions**"] + [
            f"<t:{int(as_utc(e.at).timestamp())}:f> <@{e.actor_id}> {e.action} {e.target} "
            + (" ".join(f"{k}={v}" for k, v in e.details.items() if v not in (None, "", 0, 0.0)))
            for e in entries
        ]
        await self._audit(interaction, "audit")
        await self._reply(interaction, "\n".join(lines) if entries else "No admin actions yet.")


def _engine_line(status: Any) -> str:
    """One pool engine: name (kind), health and rotation, load/slots, jobs done and failed, recent speed."""
    health = "healthy" if status.healthy else "unhealthy"
    if not status.in_rotation:
        health += ", out of rotation"
    speed = f", {status.seconds_per_image:.2f} s/image" if status.seconds_per_image is not None else ""
    failed = f", {status.total_failures} failed" if status.total_failures else ""
    error = f" — last error: {status.last_error}" if status.last_error and not status.healthy else ""
    return (
        f"• {status.name} ({getattr(status, 'kind', 'local')}): {health}, load {status.load}/{status.slots}, "
        f"{status.done} done{failed}{speed}{error}"
    )[:300]


def _percentiles(values: list[float]) -> str:
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (
        f"p50 {format_duration(statistics.median(values))}, p95 {format_duration(p95)} ({len(values)} jobs)"
    )


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(AdminCog(bot))
