"""The buttons under a result: U1–U4, V1–V4 and 🔄, as dynamic items that survive restarts.

A button's ``custom_id`` is ``ib:<action>:<job id>[:<tile>]`` (at most 39 characters), so the click
carries everything needed and discord.py routes it by pattern, with no per-message state to lose.
"""

from __future__ import annotations

import asyncio
import logging
import re

import discord
from discord.ext import commands

from cogs.submitting import submit_job
from storage.models import Job, JobKind
from storage.states import JobState

log = logging.getLogger(__name__)

ACTIONS = {"u": JobKind.UPSCALE, "v": JobKind.VARIATION, "r": JobKind.REROLL}
LOOKUP_TIMEOUT = 0.75
"""Seconds to wait for the database before acknowledging a click (Discord allows 3)."""


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"ib:(?P<action>[uvr]):(?P<job>[0-9a-f]{32})(?::(?P<tile>[0-3]))?",
):
    def __init__(self, action: str, job_id: str, tile: int | None = None, row: int | None = None) -> None:
        custom_id = f"ib:{action}:{job_id}" + (f":{tile}" if tile is not None else "")
        if action == "r":
            button = discord.ui.Button(emoji="🔄", style=discord.ButtonStyle.secondary, custom_id=custom_id)
        else:
            label = f"{action.upper()}{(tile or 0) + 1}"
            button = discord.ui.Button(label=label, style=discord.ButtonStyle.secondary, custom_id=custom_id)
        super().__init__(button, row=row)
        self.action, self.job_id, self.tile = action, job_id, tile

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> JobButton:
        tile = match["tile"]
        return cls(match["action"], match["job"], int(tile) if tile is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        await handle_click(interaction, ACTIONS[self.action], self.job_id, self.tile)


def result_view(job: Job, image_count: int) -> discord.ui.View | None:
    """Grid results get U1–U4 + 🔄 and V1–V4; a single image has no buttons yet."""
    if image_count < 2:
        return None
    view = discord.ui.View(timeout=None)
    for tile in range(image_count):
        view.add_item(JobButton("u", job.id, tile, row=0))
    view.add_item(JobButton("r", job.id, row=0))
    for tile in range(image_count):
        view.add_item(JobButton("v", job.id, tile, row=1))
    return view


async def handle_click(interaction: discord.Interaction, kind: str, job_id: str, tile: int | None) -> None:
    bot = interaction.client
    try:
        parent = await asyncio.wait_for(bot.jobs.repo.find(job_id), LOOKUP_TIMEOUT)  # type: ignore[attr-defined]
    except TimeoutError:
        await interaction.response.send_message("The bot is busy; try that button again.", ephemeral=True)
        return
    refusal = _refusal(bot, interaction.user, parent)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True)
        return
    assert parent is not None
    await submit_job(
        interaction,
        lambda acknowledge: bot.jobs.submit_child(  # type: ignore[attr-defined]
            parent, kind, tile, interaction.user.id, acknowledge
        ),
    )


def _refusal(bot: discord.Client, user: discord.abc.User, parent: Job | None) -> str | None:
    if parent is None:
        return "That job no longer exists."
    if parent.user_id != user.id and not bot.is_admin(user):  # type: ignore[attr-defined]
        return "That is not your job: only the person who ran it (or an admin) can use its buttons."
    # STORING: the images are stored and the result is being posted (its buttons may already show)
    if parent.state not in (JobState.STORING, JobState.SUCCEEDED):
        return (
            "That job has not finished yet."
            if not JobState(parent.state).terminal
            else "That job did not finish."
        )
    return None


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(JobButton)
