"""`/imagine`: read the prompt through the bot's ``Intake`` (bot/intake.py), then queue the jobs.

Everything that can refuse a prompt without the network (syntax, moderation, admission) answers
privately before the interaction is acknowledged. Image prompts (an attachment, or links when
IMAGE_URLS is on) are downloaded only once the job is admitted (bans, quota, queue caps, moderation: a
refused user's image is never fetched), after a public "thinking…" acknowledgement, because that can take
longer than Discord's 3 seconds; a bad image then edits that message, and nothing is queued or charged.
The job is saved before the acknowledgement, so a bot stopped while it fetches the image tells the user
at its next start that the job did not start (uncharged). Downloads and decodes are bounded per user and
bot-wide (``bot.decode_gate``).

Precedence of parameters: the prompt's own ``--parameters`` > the user's ``/prefer suffix`` (only fills
parameters the prompt lacks) > the user's ``/settings`` > the server defaults.
"""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot.app import ImagineBot
from bot.deadline import ANSWER_BUDGET, Deadline
from bot.decode_gate import DecodeBusy, DecodeGate
from bot.intake import IntakeRefused
from bot.jobs import Acknowledge, LoadImage, Origin
from bot.prompt import ParsedPrompt
from bot.quotas import AdmissionRefused
from cogs.submitting import expected_origin, submit_job
from engine.safe_fetch import ImageFetchError, fetch_image, load_attachment_image
from storage.models import Job

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 60.0
ALREADY_ANSWERED = "That question was answered already; nothing more was started."


def channel_only(interaction: discord.Interaction) -> Origin:
    """The place of a job that gets its own channel message (the 2nd and later jobs of a permutation)."""
    return Origin(channel_id=interaction.channel_id or 0, guild_id=interaction.guild_id)


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.decodes = DecodeGate()

    @app_commands.command(name="imagine", description="Create four images from a text prompt")
    @app_commands.describe(
        prompt="What to draw, then parameters such as --ar 3:2 --seed 42 --no text",
        image="An image to start from (an image prompt); --iw sets how much it counts",
    )
    async def imagine(
        self, interaction: discord.Interaction, prompt: str, image: discord.Attachment | None = None
    ) -> None:
        bot = self.bot
        answer_by = Deadline(ANSWER_BUDGET)
        user = await bot.accounts.get(interaction.user.id, interaction.user.name)
        try:
            jobs = await bot.intake.read(user, prompt, attachments=1 if image else 0)
        except IntakeRefused as refusal:
            await interaction.response.send_message(str(refusal), ephemeral=True)
            return
        if len(jobs) > bot.settings.permutation_confirm_over:
            view = ConfirmJobs(self, jobs, image, interaction)
            await interaction.response.send_message(
                f"This prompt makes **{len(jobs)} jobs**. Start them all?", view=view, ephemeral=True
            )
            return
        await self.start_jobs(interaction, jobs, image, answer_by)

    async def start_jobs(
        self,
        interaction: discord.Interaction,
        jobs: list[ParsedPrompt],
        image: discord.Attachment | None,
        answer_by: Deadline,
    ) -> None:
        """The first job answers the interaction (by ``answer_by``); the others get their own channel
        messages."""
        first, *others = jobs
        if first.image_urls or image is not None:
            started = await self._start_with_image(interaction, first, image, answer_by)
        else:
            started = await submit_job(
                interaction,
                lambda ack: self._submit(
                    interaction, first, ack, expected=expected_origin(interaction), answer_by=answer_by
                ),
            )
        if started is None:
            return
        for parsed in others:
            try:
                await self._submit(
                    interaction,
                    parsed,
                    self._channel_origin(interaction),
                    started.params.init_image_key,
                    expected=channel_only(interaction),
                )
            except Exception as error:  # refused (queue full...) or failed: say so once, privately
                await interaction.followup.send(f"Not all jobs could start: {error}", ephemeral=True)
                return

    async def _submit(
        self,
        interaction: discord.Interaction,
        parsed: ParsedPrompt,
        acknowledge: Acknowledge,
        key: str | None = None,
        *,
        expected: Origin | None = None,
        load_image: LoadImage | None = None,
        answer_by: Deadline | None = None,
    ) -> Job:
        return await self.bot.jobs.submit_imagine(
            interaction.user.id,
            acknowledge,
            parsed,
            user_name=interaction.user.name,
            init_image_key=key,
            expected=expected,
            load_image=load_image,
            answer_by=answer_by,
        )

    def _channel_origin(self, interaction: discord.Interaction) -> Acknowledge:
        async def acknowledge() -> Origin:
            return channel_only(interaction)

        return acknowledge

    async def _start_with_image(
        self,
        interaction: discord.Interaction,
        parsed: ParsedPrompt,
        image: discord.Attachment | None,
        answer_by: Deadline,
    ) -> Job | None:
        """The job is admitted, saved and acknowledged first (nothing is fetched for a refused job), then
        its image is fetched and decoded within the decode bounds and stored, then it is queued."""

        async def load_image() -> str:
            try:
                async with self.decodes.slot(interaction.user.id):
                    picture = await self._load_image(parsed, image)
            except ImageFetchError as error:
                raise AdmissionRefused(f"That image could not be used: {error}") from error
            except DecodeBusy as busy:
                raise AdmissionRefused(str(busy)) from busy
            return await self.bot.jobs.store.put_image(picture)

        return await submit_job(
            interaction,
            lambda ack: self._submit(
                interaction,
                parsed,
                ack,
                expected=expected_origin(interaction),
                load_image=load_image,
                answer_by=answer_by,
            ),
        )

    async def _load_image(self, parsed: ParsedPrompt, image: discord.Attachment | None) -> Image.Image:
        """The job's one image prompt (``Intake`` refuses more than ``MAX_IMAGE_PROMPTS``)."""
        policy = self.bot.fetch_policy
        if image is not None:
            if image.size > policy.max_bytes:
                raise ImageFetchError("the attachment is too large")
            data = await image.read()
            return await asyncio.to_thread(load_attachment_image, data)
        return await fetch_image(parsed.image_urls[0], policy=policy)


class ConfirmJobs(discord.ui.View):
    """Yes/No for a prompt that expands into many jobs (short-lived: not persistent across restarts).

    The first click decides: the jobs start once, and the question's buttons are disabled. A second
    click that raced the first (a double click) is told so privately; it starts nothing.
    """

    def __init__(
        self,
        cog: ImagineCog,
        jobs: list[ParsedPrompt],
        image: discord.Attachment | None,
        question: discord.Interaction,
    ) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT)
        self.cog, self.jobs, self.image, self.question = cog, jobs, image, question
        self.answered = False

    @discord.ui.button(label="Yes, start them", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        answer_by = Deadline(ANSWER_BUDGET)
        if await self._already_answered(interaction):
            return
        await self.cog.start_jobs(interaction, self.jobs, self.image, answer_by)
        await self._disable(f"Starting {len(self.jobs)} jobs.")

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if await self._already_answered(interaction):
            return
        self.stop()
        await interaction.response.edit_message(content="Canceled: nothing was queued.", view=None)

    async def _already_answered(self, interaction: discord.Interaction) -> bool:
        """True (and the clicker told) if another click decided already; else this click decides."""
        if self.answered:
            await interaction.response.send_message(ALREADY_ANSWERED, ephemeral=True)
            return True
        self.answered = True  # set before any await: a racing click sees it
        return False

    async def _disable(self, content: str) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        try:
            await self.question.edit_original_response(content=content, view=self)
        except discord.HTTPException:
            log.info("could not disable the buttons of a permutation question", exc_info=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ImagineCog(bot))
