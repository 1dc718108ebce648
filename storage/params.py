"""``JobParams``: the engine knobs and display facts a job row carries, typed, in its JSON column.

Set once when the job is made (``bot/job_params.py`` translates a parsed prompt), so a retried or
recovered job asks the engine for exactly the same thing. Rows written before this model existed hold a
plain dict with the same keys: ``JobParamsColumn`` reads them (unknown keys are ignored, missing ones
take the defaults below), so no data migration is needed. A field that is ``None`` means "not set":
the engine default applies (see ``bot.jobs.JobService._request_for``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import JSON
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class JobParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    # what the user sees
    display: str | None = None
    """The prompt as interpreted, in the prompt language (shown on the job's messages)."""
    note: str | None = None
    """A line under the waiting message (e.g. "your fast time is used up: relax mode")."""
    reply_to: str | None = None
    """A button's result: a link to the message it came from."""
    remixed: bool = False
    """Made from a Remix edit."""
    mark_message: tuple[int, int] | None = None
    """A button's job: (channel id, message id) of the message whose buttons must show it as used.
    Written with the job, before that edit is sent; cleared once it is made, so a restart makes the
    edits a killed process left (``bot.results.ResultService.pending_marks``)."""
    awaiting_image: bool = False
    """An image prompt job saved before its image was fetched (``JobService.submit_imagine``): a
    process that stops before the image is stored leaves it for the next start to fail, uncharged."""
    replaced_message: tuple[str, int] | None = None
    """(interaction token, message id) of the interaction message a long-waiting job is moving away from:
    written before the new channel message is posted and kept until the old one is deleted, so a process
    killed at any step finishes the move (``cogs.presenter.DiscordPresenter.move_aging_messages``)."""

    # what the engine is asked for (beyond the row's prompt, size, steps, seed and operation)
    aspect: tuple[int, int] | None = None
    engine_prompt: str | None = None
    """The plain reading of the prompt (``::`` parts reduced); None: the row's ``prompt``."""
    engine_negative: str | None = None
    """The plain negative prompt (``--no`` plus negatively weighted parts); None: ``negative_prompt``."""
    prompt_parts: tuple[tuple[str, float], ...] = ()
    """``::`` weights for engines that read them; empty: no weights."""
    chaos: int | None = None
    guidance: float | None = None
    tile: bool = False
    model: str | None = None
    stop: float | None = None
    """The fraction of the steps to run (``--stop``); None: all."""
    init_image_key: str | None = None
    """The stored image an image prompt starts from."""
    strength: float | None = None
    """img2img strength; None: the operation's default."""
    n: int | None = None
    """Images to make; None: a grid."""

    def but(self, **changes: Any) -> JobParams:
        """A copy with ``changes`` (validated like the constructor)."""
        return JobParams.model_validate({**self.model_dump(), **changes})

    def without(self, *names: str) -> JobParams:
        """A copy with ``names`` back at their defaults."""
        return JobParams.model_validate({k: v for k, v in self.model_dump().items() if k not in names})

    def stored(self) -> dict[str, Any]:
        """The JSON the column holds: only what differs from the defaults."""
        return self.model_dump(mode="json", exclude_defaults=True)


class JobParamsColumn(TypeDecorator[JobParams]):
    """A JSON column that reads and writes ``JobParams`` (and reads the plain dicts of old rows)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return {}
        if not isinstance(value, JobParams):
            value = JobParams.model_validate(value)
        return value.stored()

    def process_result_value(self, value: Any, dialect: Dialect) -> JobParams:
        return JobParams.model_validate(value or {})
