"""The engine server's wire schema: one set of pydantic models for the server and ``engine.remote``.

``JobRequest`` is the body of ``POST /images/jobs``; ``JobSnapshot`` is a job as ``GET /images/jobs/{id}``
(and the event stream, and webhooks) describe it; ``ErrorBody`` is every error. The server validates with
these models (a bad request is ``422`` naming the field and the reason, ``validation_problem``); the
client serialises with ``JobRequest.from_generation`` and reads answers with ``JobSnapshot``. Unknown
request keys are ignored, so older servers and newer clients (or the reverse) keep working.

Torch-free and storage-free: the bot imports it through ``engine.remote``.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.base import MAX_SEED, MAX_STEPS, GenerationRequest, Operation
from engine.chaos import MAX_CHAOS
from engine.safe_fetch import ImageFetchError, decode_image

MAX_PROMPT_CHARS = 8000
MAX_SIDE = 2048
MAX_N = 16
MAX_PROMPT_PARTS = 16
MAX_WAIT_SECONDS = 120
"""``POST /images/jobs?wait=`` waits at most this long for the job to finish."""

WebhookEvent = Literal["start", "progress", "completed"]


class JobRequest(BaseModel):
    """What a client asks for. ``None`` means the server's default (size, steps) or a random seed."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    operation: Operation = Operation.TXT2IMG
    width: int | None = Field(default=None, ge=8, le=MAX_SIDE, multiple_of=8)
    height: int | None = Field(default=None, ge=8, le=MAX_SIDE, multiple_of=8)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int = Field(default=1, ge=1, le=MAX_N)
    guidance: float = Field(default=7.0, ge=0, le=30, allow_inf_nan=False)
    strength: float = Field(default=0.6, gt=0, le=1, allow_inf_nan=False)
    stop: float = Field(default=1.0, ge=0.1, le=1, allow_inf_nan=False)
    model: str | None = Field(default=None, max_length=64)
    tile: bool = False
    chaos: int = Field(default=0, ge=0, le=MAX_CHAOS)
    prompt_parts: list[tuple[str, float]] = Field(default_factory=list, max_length=MAX_PROMPT_PARTS)
    init_image: str | None = Field(
        default=None, description="Raw base64 or a data: URL of a PNG/JPEG/WebP/GIF image."
    )
    cache: bool = Field(default=True, description="False: never answer from the result cache.")
    callback_url: str | None = Field(default=None, max_length=2000, description="Webhook for this job.")
    webhook_events: list[WebhookEvent] = Field(
        default_factory=lambda: list[WebhookEvent](["completed"]),
        description="completed (always sent); start; progress.",
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("prompt_parts")
    @classmethod
    def _parts(cls, value: list[tuple[str, float]]) -> list[tuple[str, float]]:
        for text, weight in value:
            if not text.strip() or len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"each text must be 1 to {MAX_PROMPT_CHARS} characters")
            if not -100 <= weight <= 100:
                raise ValueError("each weight must be from -100 to 100")
        if value and sum(weight for _, weight in value) <= 0:
            raise ValueError("the weights must add up to more than 0")
        return value

    @field_validator("prompt_parts", mode="before")
    @classmethod
    def _no_bool_weights(cls, value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], bool):
                    raise ValueError("weights must be numbers")
        return value

    @field_validator("width", "height", "steps", "seed", "n", "chaos", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        if isinstance(value, bool) or isinstance(value, float | str):
            raise ValueError("must be a whole number")
        return value

    @field_validator("guidance", "strength", "stop", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or isinstance(value, str):
            raise ValueError("must be a number")
        return value

    @model_validator(mode="after")
    def _needs_image(self) -> JobRequest:
        if self.operation.needs_image and not self.init_image:
            raise ValueError(f"init_image: {self.operation.value} needs an init image (base64)")
        return self

    @classmethod
    def from_generation(cls, request: GenerationRequest) -> JobRequest:
        """The body that asks a server for exactly ``request`` (same seed, so the same images)."""
        init = None
        if request.init_image is not None:
            buffer = io.BytesIO()
            request.init_image.convert("RGB").save(buffer, format="PNG")
            init = base64.b64encode(buffer.getvalue()).decode()
        return cls(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            operation=request.operation,
            width=request.width,
            height=request.height,
            steps=request.steps,
            seed=request.seed,
            n=request.n,
            guidance=request.guidance,
            strength=request.strength,
            stop=request.stop,
            model=request.model,
            tile=request.tile,
            chaos=request.chaos,
            prompt_parts=list(request.prompt_parts),
            init_image=init,
        )

    def wire(self) -> dict[str, Any]:
        """JSON for the wire: fields left at their defaults are omitted (older servers need not know them)."""
        return self.model_dump(mode="json", exclude_defaults=True)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = "error"
    message: str = "error"
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class JobSnapshot(BaseModel):
    """A job as the server describes it. ``images`` are links relative to the server."""

    model_config = ConfigDict(extra="ignore")

    id: str
    state: str
    progress: int = 0
    step: int = 0
    total: int = 0
    error: ErrorDetail | None = None
    images: list[str] = Field(default_factory=list)
    seed: int | None = None
    n: int | None = None
    engine_seconds: float | None = None
    cache_hit: bool = False
    created: float | None = None
    finished: float | None = None


class JobEvent(JobSnapshot):
    """One message of ``GET /images/jobs/{id}/events`` (and a progress webhook): a snapshot plus its kind."""

    type: Literal["state", "progress"] = "state"
    preview: str | None = None


def validation_problem(error: ValidationError) -> tuple[str, str]:
    """The first problem of a failed validation as ``(field, reason)``, short and safe to show."""
    first = error.errors(include_url=False, include_input=False)[0]
    location = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if not location and ": " in message:  # a model-level check names its field itself
        location, _, message = message.partition(": ")
    return location or "body", message


def decode_base64_image(data: str) -> Image.Image:
    """Raw base64 or a ``data:image/...;base64,`` URL → an RGB image (``engine.safe_fetch``'s hostile-image
    rules: PNG/JPEG/GIF/WebP only, pixel count checked before decoding); ``ValueError`` with the reason."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise ValueError("is not valid base64") from None
    return decode_image_bytes(raw)


def decode_image_bytes(raw: bytes) -> Image.Image:
    try:
        return decode_image(raw)
    except ImageFetchError as error:
        raise ValueError(str(error).rstrip(".")) from None
