"""What a result's buttons need that is not Discord: which job a button makes, double-click guards,
used buttons, favourites, and the images of a finished job.

The Discord side (``cogs/buttons.py``, ``cogs/rendering.py``) renders buttons and answers clicks; it asks
this service which job a button makes (``BUTTON_ACTIONS``), whether a click is a duplicate, which buttons of
a message are used, and for a result's images. The dedupe window runs on the injected clock, so tests (and
the soak bench) drive it without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from PIL import Image

from engine.base import Operation
from storage.images import LocalImageStore
from storage.jobs import JobRepository
from storage.models import Job, JobKind
from storage.results import ResultRepository

DEDUPE_SECONDS = 10.0
"""A second click of the same button by the same user within this time (or while the first job is
still live) makes no new job."""


@dataclass(frozen=True)
class ButtonAction:
    """One button under a result: the code in its ``custom_id`` and the job it makes."""

    code: str
    kind: JobKind | None  # None: no job (❤️)
    operation: Operation | None = None
    remixable: bool = False  # Remix mode edits the prompt first

    @property
    def row_operation(self) -> str | None:
        """The operation the button's job row will have (None: any, for 🔄 which copies its parent's)."""
        if self.operation is not None:
            return self.operation.value
        if self.kind == JobKind.VARIATION:
            return Operation.IMG2IMG.value
        if self.kind == JobKind.UPSCALE:
            return Operation.TXT2IMG.value
        return None


BUTTON_ACTIONS: dict[str, ButtonAction] = {
    a.code: a
    for a in (
        ButtonAction("u", JobKind.UPSCALE),
        ButtonAction("v", JobKind.VARIATION, remixable=True),
        ButtonAction("r", JobKind.REROLL, remixable=True),
        ButtonAction("us", JobKind.ENHANCE, Operation.UPSCALE_SUBTLE),
        ButtonAction("uc", JobKind.ENHANCE, Operation.UPSCALE_CREATIVE),
        ButtonAction("vs", JobKind.VARIATION, Operation.VARY_SUBTLE, remixable=True),
        ButtonAction("vx", JobKind.VARIATION, Operation.VARY_STRONG, remixable=True),
        ButtonAction("z2", JobKind.OUTPAINT, Operation.ZOOM_OUT_2X),
        ButtonAction("z15", JobKind.OUTPAINT, Operation.ZOOM_OUT_1_5X),
        ButtonAction("sq", JobKind.OUTPAINT, Operation.MAKE_SQUARE),
        ButtonAction("pl", JobKind.OUTPAINT, Operation.PAN_LEFT),
        ButtonAction("pr", JobKind.OUTPAINT, Operation.PAN_RIGHT),
        ButtonAction("pu", JobKind.OUTPAINT, Operation.PAN_UP),
        ButtonAction("pd", JobKind.OUTPAINT, Operation.PAN_DOWN),
        ButtonAction("f", None),
    )
}
"""Button code → job kind and engine operation: the one table (the Discord side adds labels and emoji)."""


def used_key(action: str, tile: int | None) -> str:
    """How a used button is named in a ``used`` set: ``u:2`` for a grid tile's button, else the code."""
    return f"{action}:{tile}" if tile is not None else action


def action_of(child: Job) -> str | None:
    """The button that made ``child`` (as a ``used_key``), or None."""
    if child.kind == JobKind.UPSCALE:
        return used_key("u", child.parent_index)
    if child.kind == JobKind.REROLL:
        return "r"
    if child.kind == JobKind.VARIATION and child.operation == Operation.IMG2IMG:
        return used_key("v", child.parent_index)
    for action in BUTTON_ACTIONS.values():
        if action.operation is not None and action.operation == child.operation and action.kind == child.kind:
            return action.code
    return None


class Dedupe:
    """In-memory guard against double clicks racing each other (the database check covers restarts).

    Keys are claimed until the click's job is made (or refused); a made job keeps its key for
    ``DEDUPE_SECONDS`` more, measured on ``clock`` (seconds, monotonic in production)."""

    def __init__(self, clock: Callable[[], float], seconds: float = DEDUPE_SECONDS) -> None:
        self.clock = clock
        self.seconds = seconds
        self._until: dict[tuple[object, ...], float] = {}

    def claim(self, key: tuple[object, ...]) -> bool:
        now = self.clock()
        if self._until.get(key, float("-inf")) > now:
            return False
        self._until = {k: t for k, t in self._until.items() if t > now}  # forget old keys
        self._until[key] = float("inf")  # until the job is made (or refused)
        return True

    def done(self, key: tuple[object, ...], made: bool) -> None:
        if made:
            self._until[key] = self.clock() + self.seconds
        else:
            self._until.pop(key, None)


class ResultService:
    """Results and what users did with them; one per bot (``ImagineBot.results``)."""

    def __init__(
        self,
        results: ResultRepository,
        jobs: JobRepository,
        store: LocalImageStore,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self.repo = results
        self.jobs = jobs
        self.store = store
        self.now = now
        self.dedupe = Dedupe(lambda: self.now().timestamp())

    async def duplicate_of(
        self, user_id: int, parent: Job, action: ButtonAction, index: int | None, prompt: str
    ) -> Job | None:
        """A job of ``user_id`` from the same button of ``parent`` that is live or just made."""
        return await self.repo.duplicate_of(
            user_id=user_id,
            parent_id=parent.id,
            kind=action.kind or "",
            operation=action.row_operation,
            index=index,
            prompt=prompt,
            since=self.now() - timedelta(seconds=DEDUPE_SECONDS),
        )

    async def used_buttons(self, parent_id: str) -> set[str]:
        """The ``used_key``s of the buttons of ``parent_id`` that made a job."""
        return {key for key in map(action_of, await self.repo.children(parent_id)) if key is not None}

    async def image_count(self, job_id: str) -> int:
        return len(await self.jobs.images(job_id))

    async def toggle_favourite(self, user_id: int, job_id: str) -> bool:
        return await self.repo.toggle_favourite(user_id, job_id)

    async def images(self, job: Job) -> list[Image.Image]:
        """The stored images of a finished job, in tile order (for ``/show``)."""
        stored = sorted(await self.jobs.images(job.id), key=lambda image: image.index)
        if not stored:
            raise LookupError(f"job {job.id} has no stored images")
        return [await self.store.get_image(image.key) for image in stored]
