"""Turning an interaction into a job: acknowledge only once the job is admitted, else answer privately."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import discord

from bot.jobs import Acknowledge, Origin
from bot.quotas import AdmissionRefused
from storage.models import Job

log = logging.getLogger(__name__)

BUSY = "The bot is busy right now; nothing was queued. Try again in a moment."
FAILED = "Sorry, that could not be queued. Nothing was charged; try again."


def expected_origin(interaction: discord.Interaction) -> Origin:
    """Where the job's message will be, as far as it is known before the interaction is acknowledged:
    saved with the job, so that a restart can still find the "thinking…" message (its id comes later)."""
    return Origin(
        channel_id=interaction.channel_id or 0,
        guild_id=interaction.guild_id,
        application_id=interaction.application_id,
        interaction_token=interaction.token,
    )


def deferring(interaction: discord.Interaction) -> Acknowledge:
    """An ``Acknowledge`` that defers with a public "thinking…" message: the job's message from then on."""

    async def acknowledge() -> Origin:
        response = await interaction.response.defer(thinking=True)
        return replace(expected_origin(interaction), message_id=response.message_id if response else None)

    return acknowledge


async def submit_job(
    interaction: discord.Interaction, submit: Callable[[Acknowledge], Awaitable[Job]]
) -> Job | None:
    try:
        return await submit(deferring(interaction))
    except AdmissionRefused as refusal:
        await answer_privately(interaction, str(refusal))
    except TimeoutError:
        await answer_privately(interaction, BUSY)
    except Exception:
        log.exception("could not queue a job for interaction %s", interaction.id)
        await answer_privately(interaction, FAILED)
    return None


async def answer_privately(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer whether or not the interaction was acknowledged already."""
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
        return
    try:
        await interaction.edit_original_response(content=text)  # the public "thinking…" message
    except discord.HTTPException:
        await interaction.followup.send(text, ephemeral=True)
