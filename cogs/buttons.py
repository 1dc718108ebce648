"""The buttons under a result, as dynamic items that survive restarts, and ``/show``.

A button's ``custom_id`` is ``ib:<action>:<job id>[:<tile>]`` (at most 41 characters), so the click
carries everything needed and discord.py routes it by pattern, with no per-message state to lose:

=========  =====================  ==========================================================
action     button                 job it makes (kind / engine operation)
=========  =====================  ==========================================================
``u``      U1–U4 (grid, tile)     UPSCALE: the tile on its own, no engine
``v``      V1–V4 (grid, tile)     VARIATION / img2img
``r``      🔄 (grid)              REROLL: same prompt, new seed
``us``     Upscale (Subtle)       ENHANCE / upscale_subtle (2x)
``uc``     Upscale (Creative)     ENHANCE / upscale_creative (2x)
``vs``     Vary (Subtle)          VARIATION / vary_subtle
``vx``     Vary (Strong)          VARIATION / vary_strong
``z2``     Zoom Out 2x            OUTPAINT / zoom_out_2x
``z15``    Zoom Out 1.5x          OUTPAINT / zoom_out_1.5x
``sq``     Make Square            OUTPAINT / make_square
``pl`` …   ⬅️ ➡️ ⬆️ ⬇️              OUTPAINT / pan_left, pan_right, pan_up, pan_down
``f``      ❤️                     none: toggles the clicker's favourite flag on the job
=========  =====================  ==========================================================

Buttons of a single image carry no tile (the image is index 0). The remix modal's ``custom_id`` is
``ib:m:<action>:<job id>[:<tile>]`` and its text input's is ``prompt``, so a submit carries everything
too: discord.py hands a submit only to a ``Modal`` object it still holds, so ``ResultsCog`` also listens
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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.deadline import Deadline, finish_within
from bot.edit_budget import EditBudget
from bot.prompt import PromptError, parse_prompt
from cogs.submitting import submit_job
from engine.base import Operation
from storage.models import Job, JobKind
from storage.results import ResultRepository
from storage.states import JobState

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 1.2
"""Seconds the database lookups of one click may take together before it is answered "busy"; admission
then has ``bot.jobs.ADMISSION_TIMEOUT`` (1.5 s), which keeps the answer within Discord's 3 s."""
FAVOURITE_SLOW = "The bot is busy: your ❤️ is being saved. No need to press it again."
DEDUPE_SECONDS = 10.0
"""A second click of the same button by the same user within this time (or while the first job is
still live) makes no new job."""

MODAL_TIMEOUT = 15 * 60.0
"""Seconds discord.py keeps a sent remix modal in memory: Discord's interaction lifetime. A submit after
that (or after a restart) is handled from its ``custom_id`` alone, so this only bounds memory."""
MARK_DELAY = 1.0
"""Seconds at least between a click and the edit that colours its button (and between two such edits
of one message): clicks in a burst share one edit."""
MARK_ATTEMPTS = 3
"""Tries for one mark edit that Discord answered with an error other than 403/404."""
MARK_FLUSH_TIMEOUT = 3.0
"""Seconds a stopping bot gives the marks still waiting (sent at once, without the budget)."""

NOT_YOUR_JOB = "That is not your job: only the person who ran it (or an admin) can use its buttons."
ALREADY_WORKING = "I'm already working on that one; the result will appear in its own message."


@dataclass(frozen=True)
class Action:
    code: str
    kind: str | None  # None: no job (❤️)
    operation: Operation | None = None
    label: str | None = None
    emoji: str | None = None
    remixable: bool = False  # Remix mode edits the prompt first

    @property
    def used_style(self) -> discord.ButtonStyle:
        return discord.ButtonStyle.primary if self.code in ("u", "v", "r") else discord.ButtonStyle.success


ACTIONS: dict[str, Action] = {
    a.code: a
    for a in (
        Action("u", JobKind.UPSCALE),
        Action("v", JobKind.VARIATION, remixable=True),
        Action("r", JobKind.REROLL, emoji="🔄", remixable=True),
        Action("us", JobKind.ENHANCE, Operation.UPSCALE_SUBTLE, "Upscale (Subtle)"),
        Action("uc", JobKind.ENHANCE, Operation.UPSCALE_CREATIVE, "Upscale (Creative)"),
        Action("vs", JobKind.VARIATION, Operation.VARY_SUBTLE, "Vary (Subtle)", remixable=True),
        Action("vx", JobKind.VARIATION, Operation.VARY_STRONG, "Vary (Strong)", remixable=True),
        Action("z2", JobKind.OUTPAINT, Operation.ZOOM_OUT_2X, "Zoom Out 2x"),
        Action("z15", JobKind.OUTPAINT, Operation.ZOOM_OUT_1_5X, "Zoom Out 1.5x"),
        Action("sq", JobKind.OUTPAINT, Operation.MAKE_SQUARE, "Make Square"),
        Action("pl", JobKind.OUTPAINT, Operation.PAN_LEFT, emoji="⬅️"),
        Action("pr", JobKind.OUTPAINT, Operation.PAN_RIGHT, emoji="➡️"),
        Action("pu", JobKind.OUTPAINT, Operation.PAN_UP, emoji="⬆️"),
        Action("pd", JobKind.OUTPAINT, Operation.PAN_DOWN, emoji="⬇️"),
        Action("f", None, emoji="❤️"),
    )
}
_ACTION_PATTERN = "|".join(sorted(ACTIONS, key=len, reverse=True))

SINGLE_ROWS = (("us", "uc", "vs", "vx"), ("z2", "z15", "sq"), ("pl", "pr", "pu", "pd"), ("f",))
"""The buttons of a separated image (U1–U4 results and every other single-image job)."""
UPSCALED_ROWS = (("vs", "vx", "f"),)
"""An Upscale (Subtle/Creative) result: no further upscale, zoom or pan (Midjourney shows a reduced set)."""


def custom_id_for(action: str, job_id: str, tile: int | None = None) -> str:
    return f"ib:{action}:{job_id}" + (f":{tile}" if tile is not None else "")


def remix_custom_id(action: str, job_id: str, tile: int | None = None) -> str:
    return "ib:m:" + custom_id_for(action, job_id, tile)[3:]


def used_key(action: str, tile: int | None) -> str:
    return f"{action}:{tile}" if tile is not None else action


def action_of(child: Job) -> str | None:
    """The button that made ``child`` (as a ``used_key``), or None."""
    if child.kind == JobKind.UPSCALE:
        return used_key("u", child.parent_index)
    if child.kind == JobKind.REROLL:
        return "r"
    if child.kind == JobKind.VARIATION and child.operation == Operation.IMG2IMG:
        return used_key("v", child.parent_index)
    for action in ACTIONS.values():
        if action.operation is not None and action.operation == child.operation and action.kind == child.kind:
            return action.code
    return None


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=rf"ib:(?P<action>{_ACTION_PATTERN}):(?P<job>[0-9a-f]{{32}})(?::(?P<tile>[0-3]))?",
):
    def __init__(
        self,
        action: str,
        job_id: str,
        tile: int | None = None,
        row: int | None = None,
        used: bool = False,
    ) -> None:
        spec = ACTIONS[action]
        style = spec.used_style if used else discord.ButtonStyle.secondary
        label = spec.label
        if action in ("u", "v"):
            label = f"{action.upper()}{(tile or 0) + 1}"
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            label=label, emoji=spec.emoji, style=style, custom_id=custom_id_for(action, job_id, tile)
        )
        super().__init__(button, row=row)
        self.action, self.job_id, self.tile = action, job_id, tile

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> JobButton:
        tile = match["tile"]
        return cls(match["action"], match["job"], int(tile) if tile is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        await handle_click(interaction, self.action, self.job_id, self.tile)


def result_view(job: Job, image_count: int, used: frozenset[str] | set[str] = frozenset()) -> discord.ui.View:
    """Grid results get U1–U4 + 🔄 and V1–V4; a single image gets the single-image set (reduced after
    an Upscale). ``used``: ``used_key``s of buttons already used (shown coloured)."""
    view = discord.ui.View(timeout=None)
    if image_count >= 2:
        for tile in range(image_count):
            view.add_item(JobButton("u", job.id, tile, row=0, used=used_key("u", tile) in used))
        view.add_item(JobButton("r", job.id, row=0, used="r" in used))
        for tile in range(image_count):
            view.add_item(JobButton("v", job.id, tile, row=1, used=used_key("v", tile) in used))
        return view
    rows = UPSCALED_ROWS if job.kind == JobKind.ENHANCE else SINGLE_ROWS
    for row, actions in enumerate(rows):
        for action in actions:
            view.add_item(JobButton(action, job.id, row=row, used=action != "f" and action in used))
    return view


# -- clicks -------------------------------------------------------------------------------------------


class _Dedupe:
    """In-memory guard against double clicks racing each other (the database check covers restarts)."""

    def __init__(self) -> None:
        self._until: dict[tuple[object, ...], float] = {}

    def claim(self, key: tuple[object, ...]) -> bool:
        now = time.monotonic()
        if self._until.get(key, 0.0) > now:
            return False
        self._until = {k: t for k, t in self._until.items() if t > now}  # forget old keys
        self._until[key] = float("inf")  # until the job is made (or refused)
        return True

    def done(self, key: tuple[object, ...], made: bool) -> None:
        if made:
            self._until[key] = time.monotonic() + DEDUPE_SECONDS
        else:
            self._until.pop(key, None)


_dedupe = _Dedupe()


def _results(bot: discord.Client) -> ResultRepository:
    return ResultRepository(bot.database)  # type: ignore[attr-defined]


async def handle_click(interaction: discord.Interaction, action: str, job_id: str, tile: int | None) -> None:
    bot = interaction.client
    spec = ACTIONS[action]
    deadline = Deadline(LOOKUP_TIMEOUT)
    try:
        parent, user = await deadline.wait(
            asyncio.gather(
                bot.jobs.repo.find(job_id),  # type: ignore[attr-defined]
                bot.accounts.get(interaction.user.id, interaction.user.name),  # type: ignore[attr-defined]
            )
        )
    except TimeoutError:
        await interaction.response.send_message("The bot is busy; try that button again.", ephemeral=True)
        return
    if spec.kind is None:  # ❤️: a per-user flag, anyone who sees the result may set their own
        await _favourite(interaction, parent, deadline)
        return
    refusal = _refusal(bot, interaction.user, parent)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True)
        return
    assert parent is not None
    if spec.remixable and getattr(user, "remix", False):
        await interaction.response.send_modal(RemixModal(parent, action, tile))
        return
    await _submit_child(interaction, parent, spec, tile, deadline)


async def _submit_child(
    interaction: discord.Interaction,
    parent: Job,
    spec: Action,
    tile: int | None,
    deadline: Deadline,
    remix_text: str | None = None,
) -> None:
    """Dedupe, then admit and queue the button's job; mark the button used on the clicked message."""
    bot = interaction.client
    remix = None
    if remix_text is not None:
        try:
            remix = parse_prompt(remix_text)
        except PromptError as error:
            await interaction.response.send_message(str(error), ephemeral=True)
            return
    index = tile if spec.operation is None else 0
    prompt = remix.text if remix is not None else parent.prompt
    key = (interaction.user.id, parent.id, spec.code, tile, prompt)
    if not _dedupe.claim(key):
        await interaction.response.send_message(ALREADY_WORKING, ephemeral=True)
        return
    made = False
    try:
        try:
            duplicate = await deadline.wait(
                _results(bot).duplicate_of(
                    user_id=interaction.user.id,
                    parent_id=parent.id,
                    kind=spec.kind or "",
                    operation=_operation_value(spec),
                    index=index,
                    prompt=prompt,
                    since=bot.now() - timedelta(seconds=DEDUPE_SECONDS),  # type: ignore[attr-defined]
                )
            )
        except TimeoutError:
            await interaction.response.send_message("The bot is busy; try that button again.", ephemeral=True)
            return
        if duplicate is not None:
            await interaction.response.send_message(ALREADY_WORKING, ephemeral=True)
            return
        reply_to = _link(interaction, parent)
        job = await submit_job(
            interaction,
            lambda acknowledge: bot.jobs.submit_child(  # type: ignore[attr-defined]
                parent,
                spec.kind,
                index,
                interaction.user.id,
                acknowledge,
                operation=spec.operation,
                remix=remix,
                extra_params={"reply_to": reply_to} if reply_to else None,
            ),
        )
        made = job is not None
    finally:
        _dedupe.done(key, made)
    if made:
        _mark_used(interaction, parent)


def _operation_value(spec: Action) -> str | None:
    """The operation the button's job row will have (None: any, for 🔄 which copies its parent's)."""
    if spec.operation is not None:
        return spec.operation.value
    return {JobKind.VARIATION: Operation.IMG2IMG.value, JobKind.UPSCALE: Operation.TXT2IMG.value}.get(
        spec.kind or ""
    )


def _refusal(bot: discord.Client, user: discord.abc.User, parent: Job | None) -> str | None:
    if parent is None:
        return "That job no longer exists."
    everyone = getattr(bot.settings, "buttons_for_everyone", False)  # type: ignore[attr-defined]
    if parent.user_id != user.id and not everyone and not bot.is_admin(user):  # type: ignore[attr-defined]
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


async def _favourite(interaction: discord.Interaction, job: Job | None, deadline: Deadline) -> None:
    if job is None or job.state != JobState.SUCCEEDED:
        await interaction.response.send_message("That result no longer exists.", ephemeral=True)
        return
    try:
        now_favourite = await finish_within(
            _results(interaction.client).toggle_favourite(interaction.user.id, job.id),
            deadline.left() + LOOKUP_TIMEOUT,  # no admission after it: it may use that time too
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
    progress edit. A failed edit is retried; ``close()`` sends what is still waiting when the bot stops.
    """

    def __init__(self, bot: discord.Client, budget: EditBudget, *, delay: float = MARK_DELAY) -> None:
        self.bot = bot
        self.budget = budget
        self.delay = delay
        self._pending: dict[int, _Mark] = {}  # message id -> the newest request
        self._tasks: dict[int, asyncio.Task[None]] = {}
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
            children = await _results(self.bot).children(parent.id)
            used = {key for key in map(action_of, children) if key is not None}
            images = await self.bot.jobs.repo.images(parent.id)  # type: ignore[attr-defined]
            message = self.bot.get_partial_messageable(mark.channel_id).get_partial_message(message_id)
            await message.edit(view=result_view(parent, len(images), used))
        except (discord.NotFound, discord.Forbidden):
            log.info("job %s: message %s can no longer be marked", parent.id, message_id)
        except Exception:
            mark.attempts += 1
            log.warning(
                "job %s: marking used buttons failed (try %d)", parent.id, mark.attempts, exc_info=True
            )
            return False
        else:
            self.edits += 1
        return True

    async def close(self, timeout: float = MARK_FLUSH_TIMEOUT) -> None:
        """Stop waiting: send every pending mark now (for up to ``timeout`` seconds), then forget them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending, self._pending = self._pending, {}
        sends = [asyncio.create_task(self._send(mid, mark)) for mid, mark in pending.items()]
        if sends:
            _, late = await asyncio.wait(sends, timeout=timeout)
            for send in late:
                send.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def _mark_used(interaction: discord.Interaction, parent: Job) -> None:
    """Have the clicked message (or, without one, the parent's message) show the used buttons."""
    get_cog = getattr(interaction.client, "get_cog", None)
    marker: ButtonMarker | None = getattr(get_cog("ResultsCog") if get_cog else None, "marker", None)
    if marker is None:
        return
    message = interaction.message
    if message is not None:
        marker.mark(message.channel.id, message.id, parent)
    elif parent.channel_id and parent.message_id:
        marker.mark(parent.channel_id, parent.message_id, parent)


# -- Remix mode ---------------------------------------------------------------------------------------

_REMIX_ID = re.compile(rf"ib:m:(?P<action>{_ACTION_PATTERN}):(?P<job>[0-9a-f]{{32}})(?::(?P<tile>[0-3]))?")
_REMIX_INPUT = "prompt"
_HANDLED = "imaginebot.remix-submit-handled"
"""Key in ``Interaction.extras``: the live modal and the ``on_interaction`` listener see the same object."""


@dataclass(frozen=True)
class RemixSubmit:
    """What a remix modal's submit says: which button of which job, and the edited prompt."""

    action: str
    job_id: str
    tile: int | None
    text: str

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> RemixSubmit | None:
        """From a modal submit's ``interaction.data``; None when the modal is not one of ours."""
        match = _REMIX_ID.fullmatch(str((data or {}).get("custom_id", "")))
        if match is None or not ACTIONS[match["action"]].remixable:
            return None
        text = _input_value(data.get("components", []) if data else [], _REMIX_INPUT)
        tile = match["tile"]
        return cls(match["action"], match["job"], int(tile) if tile is not None else None, text or "")


def _input_value(components: Any, custom_id: str) -> str | None:
    """The submitted value of a modal's text input, in an action row (type 1) or a label (type 18)."""
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id and "value" in component:
            return str(component["value"])
        nested = component.get("components") or ([component["component"]] if "component" in component else [])
        found = _input_value(nested, custom_id)
        if found is not None:
            return found
    return None


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
            custom_id=_REMIX_INPUT,
            default=str(parent.params.get("display", parent.prompt))[:1000],
            max_length=1000,
        )
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await handle_remix_submit(interaction)


async def handle_remix_submit(interaction: discord.Interaction) -> bool:
    """Make the remixed job of a remix modal's submit; False if it is not ours or was taken already.

    The live ``RemixModal`` and the ``on_interaction`` listener both call this for a submit while the
    modal is in memory; the first one takes it (a flag in ``interaction.extras``), so it runs once.
    """
    submit = RemixSubmit.parse(interaction.data)  # type: ignore[arg-type]
    if submit is None or interaction.extras.get(_HANDLED):
        return False
    interaction.extras[_HANDLED] = True
    bot = interaction.client
    deadline = Deadline(LOOKUP_TIMEOUT)
    try:
        parent = await deadline.wait(bot.jobs.repo.find(submit.job_id))  # type: ignore[attr-defined]
    except TimeoutError:
        await interaction.response.send_message("The bot is busy; try again.", ephemeral=True)
        return True
    refusal = _refusal(bot, interaction.user, parent)
    if refusal:
        await interaction.response.send_message(refusal, ephemeral=True)
        return True
    assert parent is not None
    await _submit_child(
        interaction, parent, ACTIONS[submit.action], submit.tile, deadline, remix_text=submit.text
    )
    return True


# -- /show --------------------------------------------------------------------------------------------

_JOB_ID = re.compile(r"[0-9a-f]{32}")


class ResultsCog(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.marker = ButtonMarker(bot, bot.edit_budget)  # type: ignore[attr-defined]

    async def cog_unload(self) -> None:
        await self.marker.close()

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Remix modal submits that no live ``RemixModal`` took: after a restart or its timeout."""
        if interaction.type is discord.InteractionType.modal_submit:
            await handle_remix_submit(interaction)

    @app_commands.command(name="show", description="Bring back one of your results with fresh buttons")
    @app_commands.describe(job_id="The job id (from /info or the result's buttons)")
    async def show(self, interaction: discord.Interaction, job_id: str) -> None:
        from cogs.presenter import headline  # the presenter imports this module

        wanted = job_id.strip().lower()
        if not _JOB_ID.fullmatch(wanted):
            await interaction.response.send_message(
                "That is not a job id: it is 32 characters of 0-9 and a-f.", ephemeral=True
            )
            return
        try:
            job = await finish_within(self.bot.jobs.repo.find(wanted), LOOKUP_TIMEOUT)  # type: ignore[attr-defined]
        except TimeoutError:
            await interaction.response.send_message("The bot is busy; try again.", ephemeral=True)
            return
        if job is None or (job.user_id != interaction.user.id and not self.bot.is_admin(interaction.user)):  # type: ignore[attr-defined]
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
            file, count = await _result_file(self.bot, job)
        except Exception:
            log.exception("job %s: could not load its result for /show", job.id)
            await interaction.edit_original_response(
                content="Sorry, that result's images could not be loaded."
            )
            return
        content = f"{headline(job)} ({job.mode})" if count > 1 else headline(job)
        await interaction.edit_original_response(
            content=content, attachments=[file], view=result_view(job, count)
        )


async def _result_file(bot: commands.Bot, job: Job) -> tuple[discord.File, int]:
    from bot.grid import encode_for_upload, make_grid

    images = await bot.jobs.repo.images(job.id)  # type: ignore[attr-defined]
    if not images:
        raise LookupError(f"job {job.id} has no stored images")
    pictures = [await bot.jobs.store.get_image(image.key) for image in images]  # type: ignore[attr-defined]
    picture = pictures[0] if len(pictures) == 1 else make_grid(pictures)
    data, extension = await asyncio.to_thread(encode_for_upload, picture)
    return discord.File(io.BytesIO(data), filename=f"{job.id}.{extension}"), len(images)


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(ResultsCog(bot))
