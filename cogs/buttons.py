"""The buttons under a result (clicks, Remix, used-button marks) and ``/show``.

What a button looks like and its ``custom_id`` are in ``cogs/rendering.py``; which job it makes, the
double-click guard, used buttons and favourites in ``bot/results.py``. This cog answers the clicks.

discord.py hands a modal submit only to a ``Modal`` object it still holds, so ``ResultsCog`` also listens
to ``on_interaction`` and handles our modal submits that no live modal took (after a restart, or once the
modal timed out). Both routes run ``handle_remix_submit``, which takes each interaction once.

Used buttons are shown coloured (primary for U/V/🔄, green for the single-image buttons), as Midjourney
does; which are used is read from the parent's child jobs. ``ButtonMarker`` makes those edits: coalesced
per message and paced by the bot's shared ``EditBudget`` as low-priority edits.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.deadline import ANSWER_BUDGET, Deadline, finish_within
from bot.edit_budget import EditBudget
from bot.grid import encode_for_upload, make_grid
from bot.intake import IntakeRefused
from bot.results import BUTTON_ACTIONS, ButtonAction
from cogs.rendering import (
    CLICK_HANDLER_COG,
    REMIX_INPUT,
    JobButton,
    RemixSubmit,
    remix_custom_id,
    result_content,
    result_view,
)
from cogs.submitting import expected_origin, submit_job
from storage.models import Job
from storage.states import JobState

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 1.2
"""Seconds ``/show`` waits for its database lookup before it answers "busy"."""
FAVOURITE_SLOW = "The bot is busy: your ❤️ is being saved. No need to press it again."

MODAL_TIMEOUT = 15 * 60.0
"""Seconds discord.py keeps a sent remix modal in memory: Discord's interaction lifetime. A submit after
that (or after a restart) is handled from its ``custom_id`` alone, so this only bounds memory."""
MARK_DELAY = 1.0
"""Seconds at least between a click and the edit that colours its button (and between two such edits
of one message): clicks in a burst share one edit."""
MARK_ATTEMPTS = 3
"""Tries for one mark edit that Discord answered with an error other than 403/404."""
MARK_FLUSH_TIMEOUT = 3.0
"""Seconds a stopping bot gives the marks still waiting (still paced by the budget). What is not sent by
then stays recorded on the button's job (``JobParams.mark_message``) and is sent on the next start."""

SHOWN_KEPT = 1024
"""Messages whose last marking edit the marker remembers (to skip an edit that would change nothing)."""

NOT_YOUR_JOB = "That is not your job: only the person who ran it (or an admin) can use its buttons."
ALREADY_WORKING = "I'm already working on that one; the result will appear in its own message."


# -- clicks -------------------------------------------------------------------------------------------


async def handle_click(
    bot: ImagineBot, interaction: discord.Interaction, action: str, job_id: str, tile: int | None
) -> None:
    spec = BUTTON_ACTIONS[action]
    deadline = Deadline(ANSWER_BUDGET)  # lookups, then admission: one budget (bot/deadline.py)
    try:
        parent, user = await deadline.wait(
            asyncio.gather(
                bot.jobs.repo.find(job_id),
                bot.accounts.get(interaction.user.id, interaction.user.name),
            )
        )
    except TimeoutError:
        await interaction.response.send_message("The bot is busy; try that button again.", ephemeral=True)
        return
    if spec.kind is None:  # ❤️: a per-user flag, anyone who sees the result may set their own
        await _favourite(bot, interaction, parent, deadline)
        return
    refusal = _refusal(bot, interaction.user, parent)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True)
        return
    assert parent is not None
    if spec.remixable and user.remix:
        await interaction.response.send_modal(RemixModal(parent, action, tile))
        return
    await _submit_child(bot, interaction, parent, spec, tile, deadline)


async def _submit_child(
    bot: ImagineBot,
    interaction: discord.Interaction,
    parent: Job,
    spec: ButtonAction,
    tile: int | None,
    deadline: Deadline,
    remix_text: str | None = None,
) -> None:
    """Dedupe, then admit and queue the button's job; mark the button used on the clicked message.

    A Remix edit goes through the bot's ``Intake`` like ``/imagine`` (banned words, ``--model`` aliases,
    the image policy), so it is refused with the same answer."""
    remix = None
    if remix_text is not None:
        try:
            user = await deadline.wait(bot.accounts.get(interaction.user.id, interaction.user.name))
            remix = await deadline.wait(
                bot.intake.read_remix(user, remix_text, original=parent.params.display or "")
            )
        except IntakeRefused as refusal:
            await interaction.response.send_message(str(refusal), ephemeral=True)
            return
        except TimeoutError:
            await interaction.response.send_message("The bot is busy; try again.", ephemeral=True)
            return
    index = tile if spec.operation is None else 0
    prompt = remix.text if remix is not None else parent.prompt
    key = (interaction.user.id, parent.id, spec.code, tile, prompt)
    dedupe = bot.results.dedupe
    if not dedupe.claim(key):
        await interaction.response.send_message(ALREADY_WORKING, ephemeral=True)
        return
    made = False
    try:
        try:
            duplicate = await deadline.wait(
                bot.results.duplicate_of(interaction.user.id, parent, spec, index, prompt)
            )
        except TimeoutError:
            await interaction.response.send_message("The bot is busy; try that button again.", ephemeral=True)
            return
        if duplicate is not None:
            await interaction.response.send_message(ALREADY_WORKING, ephemeral=True)
            return
        reply_to = _link(interaction, parent)
        extra: dict[str, object] = {"reply_to": reply_to} if reply_to else {}
        target = _mark_target(interaction, parent)
        if target is not None:  # written with the job: a restart still makes the edit (ResultsCog)
            extra["mark_message"] = target
        kind = spec.kind
        assert kind is not None  # ❤️ makes no job and never gets here
        job = await submit_job(
            interaction,
            lambda acknowledge: bot.jobs.submit_child(
                parent,
                kind,
                index,
                interaction.user.id,
                acknowledge,
                operation=spec.operation,
                remix=remix,
                extra_params=extra,
                expected=expected_origin(interaction),
                answer_by=deadline,
            ),
        )
        made = job is not None
    finally:
        dedupe.done(key, made)
    if made:
        _mark_used(bot, interaction, parent)


def _refusal(bot: ImagineBot, user: discord.abc.User, parent: Job | None) -> str | None:
    if parent is None:
        return "That job no longer exists."
    everyone = bot.settings.buttons_for_everyone
    if parent.user_id != user.id and not everyone and not bot.is_admin(user):
        return NOT_YOUR_JOB
    # STORING: the images are stored and the result is being posted (its buttons may already show)
    if parent.state not in (JobState.STORING, JobState.SUCCEEDED):
        return (
            "That job has not finished yet."
            if not JobState(parent.state).terminal
            else "That job did not finish."
        )
    return None


def _link(interaction: discord.Interaction, parent: Job) -> str | None:
    """A jump link to the clicked message: the new result's message says which one it came from."""
    message_id = interaction.message.id if interaction.message is not None else parent.message_id
    channel_id = interaction.channel_id or parent.channel_id
    if not (message_id and channel_id):
        return None
    guild = interaction.guild_id or parent.guild_id or "@me"
    return f"https://discord.com/channels/{guild}/{channel_id}/{message_id}"


async def _favourite(
    bot: ImagineBot, interaction: discord.Interaction, job: Job | None, deadline: Deadline
) -> None:
    if job is None or job.state != JobState.SUCCEEDED:
        await interaction.response.send_message("That result no longer exists.", ephemeral=True)
        return
    try:
        now_favourite = await finish_within(
            bot.results.toggle_favourite(interaction.user.id, job.id),
            deadline.left(),
        )
    except TimeoutError:  # the toggle still happens: pressing again would undo it
        await interaction.response.send_message(FAVOURITE_SLOW, ephemeral=True)
        return
    text = "❤️ Added to your favourites." if now_favourite else "Removed from your favourites."
    await interaction.response.send_message(text, ephemeral=True)


# -- marking used buttons -----------------------------------------------------------------------------


@dataclass
class _Mark:
    channel_id: int
    parent: Job
    attempts: int = 0


class ButtonMarker:
    """Colours the used buttons of result messages: low-priority edits through the shared budget.

    ``mark()`` never waits. Per message at most one edit is in flight and one request waits; the waiting
    request is replaced by newer ones and reads the used buttons from the database when it is sent, so a
    burst of clicks costs one edit (two if clicks keep coming while it is sent). Each edit first waits
    ``MARK_DELAY`` (or the budget's per-message interval, when load has stretched it), then a spare slot of
    the budget in the message's channel (these are channel-message edits), so it never delays a
    progress edit. An edit that would show the buttons the message already shows (every click of a burst
    was in the previous edit) is skipped. A failed edit is retried; ``close()`` sends what is still
    waiting when the bot stops, through the same budget.
    """

    def __init__(self, bot: ImagineBot, budget: EditBudget, *, delay: float = MARK_DELAY) -> None:
        self.bot = bot
        self.budget = budget
        self.delay = delay
        self._pending: dict[int, _Mark] = {}  # message id -> the newest request
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._shown: dict[int, frozenset[str]] = {}  # message id -> the used buttons our last edit showed
        self.edits = 0

    def mark(self, channel_id: int, message_id: int, parent: Job) -> None:
        self._pending[message_id] = _Mark(channel_id, parent)
        if message_id not in self._tasks:
            self._tasks[message_id] = asyncio.create_task(
                self._run(message_id), name=f"mark-buttons-{message_id}"
            )

    async def _run(self, message_id: int) -> None:
        try:
            while message_id in self._pending:
                await asyncio.sleep(max(self.delay, self.budget.interval()))
                await self.budget.acquire_spare(channel=self._pending[message_id].channel_id)
                mark = self._pending[message_id]  # the newest request, after the waits
                done = await self._send(message_id, mark)
                if self._pending.get(message_id) is mark and (done or mark.attempts >= MARK_ATTEMPTS):
                    del self._pending[message_id]  # (a click during the edit leaves a newer one)
        finally:
            self._tasks.pop(message_id, None)

    async def _send(self, message_id: int, mark: _Mark) -> bool:
        """One edit with the used buttons as the database has them now; False: worth another try."""
        parent = mark.parent
        try:
            used = frozenset(await self.bot.results.used_buttons(parent.id))
            if self._shown.get(message_id) != used:
                count = await self.bot.results.image_count(parent.id)
                message = self.bot.get_partial_messageable(mark.channel_id).get_partial_message(message_id)
                await message.edit(view=result_view(parent, count, used))
                self._remember_shown(message_id, used)
                self.edits += 1
            await self.bot.results.marks_made(parent.id, message_id)
        except (discord.NotFound, discord.Forbidden):
            log.info("job %s: message %s can no longer be marked", parent.id, message_id)
            await self.bot.results.marks_made(parent.id, message_id)
        except Exception:
            mark.attempts += 1
            log.warning(
                "job %s: marking used buttons failed (try %d)", parent.id, mark.attempts, exc_info=True
            )
            return False
        return True

    def _remember_shown(self, message_id: int, used: frozenset[str]) -> None:
        self._shown.pop(message_id, None)
        self._shown[message_id] = used  # newest last; the oldest go once there are too many
        while len(self._shown) > SHOWN_KEPT:
            del self._shown[next(iter(self._shown))]

    async def _send_now(self, message_id: int, mark: _Mark) -> None:
        """One edit as soon as the budget has a slot in the message's channel (no waiting for spare room)."""
        await self.budget.acquire(channel=mark.channel_id)
        await self._send(message_id, mark)

    async def close(self, timeout: float = MARK_FLUSH_TIMEOUT) -> None:
        """Stop waiting: send every pending mark as soon as the budget allows, for up to ``timeout``
        seconds, then forget them (what was not sent is sent on the next start)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending, self._pending = self._pending, {}
        sends = [asyncio.create_task(self._send_now(mid, mark)) for mid, mark in pending.items()]
        if sends:
            _, late = await asyncio.wait(sends, timeout=timeout)
            for send in late:
                send.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def _mark_target(interaction: discord.Interaction, parent: Job) -> tuple[int, int] | None:
    """The message whose buttons show the click: the clicked one, else the parent's message."""
    message = interaction.message
    if message is not None:
        return message.channel.id, message.id
    if parent.channel_id and parent.message_id:
        return parent.channel_id, parent.message_id
    return None


def _mark_used(bot: ImagineBot, interaction: discord.Interaction, parent: Job) -> None:
    """Have the clicked message (or, without one, the parent's message) show the used buttons."""
    cog = bot.get_cog(CLICK_HANDLER_COG)
    target = _mark_target(interaction, parent)
    if isinstance(cog, ResultsCog) and target is not None:
        cog.marker.mark(*target, parent)


# -- Remix mode ---------------------------------------------------------------------------------------


class RemixModal(discord.ui.Modal):
    """Remix mode: edit the prompt before a variation or reroll; the submit makes the job.

    Its ``custom_id`` and text input carry everything the submit needs, so the submit is handled the same
    whether discord.py still holds this object or not (see ``ResultsCog.on_interaction``).
    """

    def __init__(self, parent: Job, action: str, tile: int | None) -> None:
        super().__init__(
            title="Remix prompt", timeout=MODAL_TIMEOUT, custom_id=remix_custom_id(action, parent.id, tile)
        )
        self.prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="New prompt",
            style=discord.TextStyle.paragraph,
            custom_id=REMIX_INPUT,
            default=(parent.params.display or parent.prompt)[:1000],
            max_length=1000,
        )
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        if isinstance(client, ImagineBot):
            await handle_remix_submit(client, interaction)


_HANDLED = "imaginebot.remix-submit-handled"
"""Key in ``Interaction.extras``: the live modal and the ``on_interaction`` listener see the same object."""


async def handle_remix_submit(bot: ImagineBot, interaction: discord.Interaction) -> bool:
    """Make the remixed job of a remix modal's submit; False if it is not ours or was taken already.

    The live ``RemixModal`` and the ``on_interaction`` listener both call this for a submit while the
    modal is in memory; the first one takes it (a flag in ``interaction.extras``), so it runs once.
    """
    submit = RemixSubmit.parse(dict(interaction.data or {}))
    if submit is None or interaction.extras.get(_HANDLED):
        return False
    interaction.extras[_HANDLED] = True
    deadline = Deadline(ANSWER_BUDGET)
    try:
        parent = await deadline.wait(bot.jobs.repo.find(submit.job_id))
    except TimeoutError:
        await interaction.response.send_message("The bot is busy; try again.", ephemeral=True)
        return True
    refusal = _refusal(bot, interaction.user, parent)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True)
        return True
    assert parent is not None
    await _submit_child(
        bot, interaction, parent, BUTTON_ACTIONS[submit.action], submit.tile, deadline, remix_text=submit.text
    )
    return True


# -- /show --------------------------------------------------------------------------------------------

_JOB_ID = re.compile(r"[0-9a-f]{32}")


class ResultsCog(commands.Cog):
    """Answers result buttons (``cogs.rendering.ClickHandler``), Remix submits and ``/show``."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.marker = ButtonMarker(bot, bot.edit_budget)

    async def cog_load(self) -> None:
        """Make the used-button edits a previous process recorded but did not send (killed first)."""
        try:
            pending = await self.bot.results.pending_marks()
        except Exception:
            log.exception("could not read the pending used-button marks")
            return
        for channel_id, message_id, parent in pending:
            self.marker.mark(channel_id, message_id, parent)
        if pending:
            log.info("resuming %d used-button marks left by the previous process", len(pending))

    async def handle_click(
        self, interaction: discord.Interaction, action: str, job_id: str, tile: int | None
    ) -> None:
        await handle_click(self.bot, interaction, action, job_id, tile)

    async def cog_unload(self) -> None:
        await self.marker.close()

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Remix modal submits that no live ``RemixModal`` took: after a restart or its timeout."""
        if interaction.type is discord.InteractionType.modal_submit:
            await handle_remix_submit(self.bot, interaction)

    @app_commands.command(name="show", description="Bring back one of your results with fresh buttons")
    @app_commands.describe(job_id="The job id (from /info or the result's buttons)")
    async def show(self, interaction: discord.Interaction, job_id: str) -> None:
        wanted = job_id.strip().lower()
        if not _JOB_ID.fullmatch(wanted):
            await interaction.response.send_message(
                "That is not a job id: it is 32 characters of 0-9 and a-f.", ephemeral=True
            )
            return
        try:
            job = await finish_within(self.bot.jobs.repo.find(wanted), LOOKUP_TIMEOUT)
        except TimeoutError:
            await interaction.response.send_message("The bot is busy; try again.", ephemeral=True)
            return
        if job is None or (job.user_id != interaction.user.id and not self.bot.is_admin(interaction.user)):
            # the same answer for both, so ids of other users' jobs cannot be probed
            await interaction.response.send_message("You have no job with that id.", ephemeral=True)
            return
        if job.state != JobState.SUCCEEDED:
            state = JobState(job.state)
            why = "it has not finished yet" if not state.terminal else f"it ended {state.value.lower()}"
            await interaction.response.send_message(f"That job has no result to show: {why}.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        try:
            pictures = await self.bot.results.images(job)
            picture = pictures[0] if len(pictures) == 1 else make_grid(pictures)
            data, extension = await asyncio.to_thread(encode_for_upload, picture)
        except Exception:
            log.exception("job %s: could not load its result for /show", job.id)
            await interaction.edit_original_response(
                content="Sorry, that result's images could not be loaded."
            )
            return
        file = discord.File(io.BytesIO(data), filename=f"{job.id}.{extension}")
        await interaction.edit_original_response(
            content=result_content(job, len(pictures)),
            attachments=[file],
            view=result_view(job, len(pictures)),
        )


async def setup(bot: ImagineBot) -> None:
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(ResultsCog(bot))
