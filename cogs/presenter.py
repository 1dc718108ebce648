"""Shows jobs in Discord: the waiting text, throttled progress edits with previews, the result, failures.

A job's message is edited through its interaction token (a webhook edit) while the token is young;
after that, or if the message is gone, a normal channel message takes over and the job row is updated
so later edits (and a restarted bot) use it. Edits of one job are serialized and only ever move
forward (waiting → progress → final), so a slow progress edit can never overwrite the result.

Progress edits of all jobs share the bot's ``EditBudget`` (bot/edit_budget.py): a global rate, a
per-channel rate for channel-message edits, and a per-message interval that grows with the number of
running jobs. The used-button marks (cogs/buttons.py) take low-priority slots of the same budget. The
waiting text, results and failures do not wait for the budget.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum

import discord

from bot.app import ImagineBot
from bot.edit_budget import EditBudget
from bot.grid import encode_for_upload, make_grid
from bot.quotas import format_duration
from bot.throttle import ThrottledSender
from cogs.rendering import headline, result_content, result_view
from engine.base import ProgressUpdate
from storage.jobs import StoredImage
from storage.models import Job, as_utc
from storage.states import JobState

log = logging.getLogger(__name__)

TOKEN_SAFE_AGE = timedelta(minutes=14)
"""Interaction tokens die after 15 minutes; stop using one a minute before."""
TOKEN_LIFETIME = timedelta(minutes=15)
"""Discord accepts an interaction token this long after the interaction."""
TOKEN_MOVE_AGE = timedelta(minutes=13)
"""The watchdog moves a live job's message to a channel message once its token is this old."""
NONCE_LENGTH = 25
"""Discord's longest message nonce."""
LINE_REFRESH_INTERVAL = timedelta(seconds=10)
"""A waiting job's place in line and ETA are rewritten at most this often (when they changed)."""
FINISHED_MEMORY = 10_000
"""Ids of jobs whose final message was shown that the presenter remembers (oldest forgotten first)."""


class Stage(IntEnum):
    WAITING = 0
    PROGRESS = 1
    FINAL = 2


@dataclass
class _MessageState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stage: Stage = Stage.WAITING
    sender: ThrottledSender[ProgressUpdate] | None = None
    content: str | None = None  # the last text shown, for moving the message
    waiting: Job | None = None  # while it waits: the job, for updating its place in line
    line_shown_at: datetime | None = None  # when its place in line was last written
    line_text: str | None = None


class DiscordPresenter:
    def __init__(
        self,
        bot: ImagineBot,
        edit_interval: float,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        budget: EditBudget | None = None,
    ) -> None:
        self.bot = bot
        self.edit_interval = edit_interval
        self.now = now
        self.budget = budget or EditBudget(min_interval=edit_interval)
        self._messages: dict[str, _MessageState] = {}
        self._finished: dict[str, None] = {}  # jobs whose final message is shown or being shown, oldest first
        self._moves_due = True  # a stopped process may have left a move half done

    # -- JobPresenter ----------------------------------------------------------------------------

    async def queued(self, job: Job, position: int | None) -> None:
        state = self._state(job.id)
        state.waiting, state.line_shown_at = job, self.now()
        state.line_text = self._waiting_text(job, position)
        await self._edit(job, Stage.WAITING, content=state.line_text)

    def _waiting_text(self, job: Job, position: int | None) -> str:
        where = ""
        if position and position > 1:
            eta = self.bot.jobs.eta_seconds(position)
            where = f" · {position} in line" + (f", ~{format_duration(eta)}" if eta is not None else "")
        note = f"\n{job.params.note}" if job.params.note else ""
        return f"{headline(job)} (Waiting to start{where}){note}"

    async def refresh_waiting(self) -> int:
        """Rewrite the place in line and ETA of waiting jobs whose line moved; returns how many.

        At most one such edit per job per ``LINE_REFRESH_INTERVAL`` (on the bot's clock), each a
        low-priority edit of the shared budget, so progress edits always go first."""
        updated = 0
        for job_id, state in list(self._messages.items()):
            job = state.waiting
            if job is None or state.stage != Stage.WAITING or state.line_shown_at is None:
                continue
            if self.now() - state.line_shown_at < LINE_REFRESH_INTERVAL:
                continue
            text = self._waiting_text(job, self.bot.scheduler.position(job_id))
            if text == state.line_text:
                continue
            await self.budget.acquire_spare(channel=self._edit_channel(job))
            if state.stage != Stage.WAITING:
                continue  # it started meanwhile: its progress edit supersedes this one
            state.line_shown_at, state.line_text = self.now(), text
            await self._edit(job, Stage.WAITING, content=text)
            updated += 1
        return updated

    def progress(self, job: Job, update: ProgressUpdate) -> None:
        if job.id in self._finished:
            return  # a late update of an ended job: it must not edit "(NN%)" back, nor start a sender
        state = self._state(job.id)
        state.waiting = None
        if state.stage == Stage.FINAL:
            return
        if state.sender is None:
            self.budget.register(job.id)
            state.sender = ThrottledSender(
                lambda u: self._show_progress(job, u),
                self.budget.interval,
                gate=lambda first: self.budget.acquire(first=first, channel=self._edit_channel(job)),
            )
        state.sender.offer(update)

    async def succeeded(self, job: Job, images: list[StoredImage]) -> None:
        self._mark_finished(job.id)
        await self._stop_progress(job.id)
        pictures = [await self.bot.jobs.store.get_image(image.key) for image in images]
        picture = pictures[0] if len(pictures) == 1 else make_grid(pictures)
        data, extension = await asyncio.to_thread(encode_for_upload, picture)
        name = f"{job.id}.{extension}"
        await self._edit(
            job,
            Stage.FINAL,
            content=result_content(job, len(images)),
            file=discord.File(io.BytesIO(data), filename=name),
            view=result_view(job, len(images)),
        )
        self._messages.pop(job.id, None)

    async def failed(self, job: Job, reason: str) -> None:
        self._mark_finished(job.id)
        await self._stop_progress(job.id)
        mark = "" if reason.startswith("🚫") else "❌ "  # 🚫: a refusal (the safety filter), not an error
        await self._edit(job, Stage.FINAL, content=f"{headline(job)} — {mark}{reason}", clear_files=True)
        self._messages.pop(job.id, None)

    def _mark_finished(self, job_id: str) -> None:
        """From now on the job's final message is what shows: no progress, no move by the watchdog."""
        self._finished[job_id] = None
        while len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]

    # -- editing ---------------------------------------------------------------------------------

    async def _show_progress(self, job: Job, update: ProgressUpdate) -> None:
        percent = int(100 * update.step / max(1, update.total))
        file = None
        if update.preview:
            file = discord.File(io.BytesIO(update.preview), filename="preview.jpg")
        await self._edit(job, Stage.PROGRESS, content=f"{headline(job)} ({percent}%) ({job.mode})", file=file)

    async def _stop_progress(self, job_id: str) -> None:
        state = self._state(job_id)
        sender, state.sender = state.sender, None
        self.budget.unregister(job_id)
        if sender is not None:
            await sender.close()

    def _edit_channel(self, job: Job) -> int | None:
        """The channel whose bucket a progress edit of ``job`` counts against; None for webhook edits.

        Decided from the job's age: from TOKEN_MOVE_AGE on the watchdog may have moved the message to
        the channel, so its edits are counted as channel edits (conservatively, before the move too).
        """
        if job.interaction_token and job.message_id:
            if not job.created_at or self.now() - as_utc(job.created_at) < TOKEN_MOVE_AGE:
                return None
        return job.channel_id

    def _state(self, job_id: str) -> _MessageState:
        return self._messages.setdefault(job_id, _MessageState())

    async def _edit(
        self,
        job: Job,
        stage: Stage,
        *,
        content: str,
        file: discord.File | None = None,
        view: discord.ui.View | None = None,
        clear_files: bool = False,
    ) -> None:
        state = self._state(job.id)
        async with state.lock:
            if stage < state.stage:
                return  # the message has moved on; never go back
            state.stage = stage
            attachments = [file] if file is not None else ([] if clear_files else discord.utils.MISSING)
            fresh = await self._finish_move(await self.bot.jobs.repo.get(job.id))
            started = time.perf_counter()
            try:
                await self._edit_existing(fresh, content, attachments, view)
            except (discord.NotFound, _TokenTooOld):
                await self._replace_with_channel_message(fresh, content, file, view)
            state.content = content
            log.debug("job %s: edit %s took %.3fs", job.id, stage.name, time.perf_counter() - started)

    async def move_aging_messages(self) -> int:
        """Give every live job whose interaction token is about to die a normal channel message.

        Crash-safe at every point, so the user always ends with one message:
        1. the old (token, message) is recorded on the job first (``JobParams.replaced_message``): a
           move has begun;
        2. the new message is posted with a nonce made from the job id (``enforce_nonce``), so a move
           that is finished again gets the same message back from Discord (for a few minutes);
        3. the new message is recorded on the job, the token dropped;
        4. the old message is deleted while its token still works, then forgotten.
        A job with a move begun is moved on before its message is edited again (``_edit``), and a new
        process finishes every begun move on its first round (``finish_moves``).
        The list of jobs is read once per round, so each job is read again under its message's lock: a
        job that finished meanwhile (its result just posted) is left alone.
        """
        moved = 0
        for listed in await self.bot.jobs.repo.unfinished():
            if not (listed.interaction_token and listed.message_id and listed.channel_id):
                continue
            if self.now() - as_utc(listed.created_at) < TOKEN_MOVE_AGE or listed.id in self._finished:
                continue
            state = self._state(listed.id)
            async with state.lock:
                if listed.id in self._finished or state.stage == Stage.FINAL:
                    continue
                job = await self.bot.jobs.repo.get(listed.id)
                if JobState(job.state).terminal:
                    self._messages.pop(job.id, None)
                    continue
                if not (job.interaction_token and job.message_id and job.channel_id):
                    continue
                replaced = (job.interaction_token, job.message_id)
                await self.bot.jobs.repo.update_fields(
                    job.id, params=job.params.but(replaced_message=replaced)
                )
                await self._finish_move(await self.bot.jobs.repo.get(job.id))
            moved += 1
            log.info("job %s: moved to a channel message before its interaction token expires", job.id)
        return moved

    async def finish_moves(self) -> int:
        """Finish the moves a stopped process began (``move_aging_messages``), on the first round after a
        start and after a deletion failed; returns how many were finished. Only jobs young enough for
        their token to work can have one."""
        if not self._moves_due:
            return 0
        self._moves_due = False
        finished = 0
        for listed in await self.bot.jobs.repo.created_since(self.now() - TOKEN_LIFETIME):
            if listed.params.replaced_message is None:
                continue
            async with self._state(listed.id).lock:
                await self._finish_move(await self.bot.jobs.repo.get(listed.id))
            finished += 1
        return finished

    async def _finish_move(self, job: Job) -> Job:
        """Steps 2–4 of a begun move (those not done yet); returns the job as it is then."""
        if job.params.replaced_message is None:
            return job
        if job.interaction_token and job.channel_id:  # steps 2-3 (again: the nonce finds a posted one)
            content = self._state(job.id).content or f"{headline(job)} (Waiting to start)"
            new_id = await self._post_once(job.channel_id, content, nonce=f"mv{job.id}"[:NONCE_LENGTH])
            await self.bot.jobs.repo.update_fields(job.id, message_id=new_id, interaction_token=None)
        token, message_id = job.params.replaced_message
        webhook = discord.Webhook.partial(job.application_id or 0, token, client=self.bot)
        try:
            await webhook.delete_message(message_id)
        except discord.NotFound:
            pass  # deleted already (the step before a crash), or by a moderator
        except discord.HTTPException:
            if self.now() - as_utc(job.created_at) < TOKEN_LIFETIME:
                self._moves_due = True  # try again next round while the token may still work
                log.info("job %s: could not delete the old interaction message yet", job.id)
                return await self.bot.jobs.repo.get(job.id)
            log.info("job %s: the old interaction message could not be deleted", job.id)
        await self.bot.jobs.repo.update_fields(job.id, params=job.params.but(replaced_message=None))
        return await self.bot.jobs.repo.get(job.id)

    async def _post_once(self, channel_id: int, content: str, *, nonce: str) -> int:
        """Post a plain channel message that Discord makes only once per ``nonce`` (for a few minutes);
        returns its id. (discord.py's ``send`` cannot ask for ``enforce_nonce``, so the route is called.)"""
        route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
        payload = {"content": content, "nonce": nonce, "enforce_nonce": True}
        message = await self.bot.http.request(route, json=payload)
        return int(message["id"])

    async def _edit_existing(
        self, job: Job, content: str, attachments: Sequence[discord.File], view: discord.ui.View | None
    ) -> None:
        view_arg = view if view is not None else discord.utils.MISSING
        if job.interaction_token:
            if job.created_at and self.now() - as_utc(job.created_at) > TOKEN_SAFE_AGE:
                raise _TokenTooOld
            if not job.message_id:
                job = await self._find_acknowledged_message(job)
        if job.interaction_token and job.message_id:
            webhook = discord.Webhook.partial(job.application_id or 0, job.interaction_token, client=self.bot)
            await webhook.edit_message(
                job.message_id, content=content, attachments=attachments, view=view_arg
            )
            return
        if job.message_id and job.channel_id:
            message = self.bot.get_partial_messageable(job.channel_id).get_partial_message(job.message_id)
            await message.edit(content=content, attachments=attachments, view=view_arg)
            return
        raise _TokenTooOld

    async def _find_acknowledged_message(self, job: Job) -> Job:
        """The id of the interaction's "thinking…" message, for a job saved before it was acknowledged
        whose process stopped before it saved the id (``JobService._submit``). If the interaction was never
        acknowledged, Discord knows no such message: the job is shown in a new channel message instead."""
        route = discord.http.Route(
            "GET",
            "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
            webhook_id=job.application_id or 0,
            webhook_token=job.interaction_token,
        )
        try:
            original = await self.bot.http.request(route)
        except discord.NotFound:
            log.info("job %s: its interaction was never acknowledged; it gets a channel message", job.id)
            return job
        await self.bot.jobs.repo.update_fields(job.id, message_id=int(original["id"]))
        return await self.bot.jobs.repo.get(job.id)

    async def _replace_with_channel_message(
        self, job: Job, content: str, file: discord.File | None, view: discord.ui.View | None
    ) -> None:
        if not job.channel_id:
            raise RuntimeError(f"job {job.id} has no channel to post in")
        if file is not None:
            file.reset()
        channel = self.bot.get_partial_messageable(job.channel_id)
        files = [file] if file is not None else []
        if view is not None:
            message = await channel.send(content, files=files, view=view)
        else:
            message = await channel.send(content, files=files)
        await self.bot.jobs.repo.update_fields(job.id, message_id=message.id, interaction_token=None)


class _TokenTooOld(Exception):
    """The interaction token is (nearly) expired: edits must go through a channel message."""


async def setup(bot: ImagineBot) -> None:
    # the bot's budget: progress edits share it with the used-button marks (cogs/buttons.py)
    presenter = DiscordPresenter(
        bot, bot.settings.progress_edit_interval, now=bot.now, budget=bot.edit_budget
    )
    bot.jobs.presenter = presenter
    bot.maintenance["move aging messages"] = presenter.move_aging_messages
    bot.maintenance["finish moves"] = presenter.finish_moves
    bot.maintenance["refresh places in line"] = presenter.refresh_waiting


async def teardown(bot: ImagineBot) -> None:
    bot.maintenance.pop("move aging messages", None)
    bot.maintenance.pop("finish moves", None)
    bot.maintenance.pop("refresh places in line", None)
