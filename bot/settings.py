"""Settings: one typed object built once at start-up from the environment and an optional ``.env``.

Every setting is an environment variable of the same name (``DISCORD_TOKEN``, ``MODEL``, ...).
``load_settings`` turns validation errors into a short message per problem; ``python -m bot``
prints them and exits instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TOKEN_HELP = (
    "DISCORD_TOKEN is not set. Create an application at https://discord.com/developers/applications, "
    "open Bot → Reset Token, and put DISCORD_TOKEN=<token> in .env "
    "(or try it without Discord first: python -m bot sandbox)"
)


class SettingsError(Exception):
    """Settings are missing or invalid; ``str()`` is one line per problem, safe to print."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    discord_token: SecretStr = Field(description="The bot token from the Discord developer portal.")
    discord_api_base: str | None = Field(
        default=None, description="REST base URL, e.g. http://127.0.0.1:8080/api/v10 (a proxy or emulator)."
    )
    discord_gateway_url: str | None = Field(default=None, description="Gateway WebSocket URL override.")
    discord_guild_id: int | None = Field(
        default=None, description="Sync slash commands to this guild only (instant); else globally."
    )
    data_dir: Path = Field(default=Path("./data"), description="Holds the SQLite file and the images.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default SQLite in DATA_DIR."
    )
    model: str = Field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Hub id, local diffusers folder, or a single .safetensors file.",
    )
    model_resolution: int = Field(default=512, ge=64, le=2048, description="Pixels of the 1:1 side.")
    model_steps: int = Field(default=25, ge=1, le=150, description="Default denoising steps.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: str = Field(
        default="local",
        description="'local', engine server URLs http(s)://TOKEN@host:port, a1111+…, comfyui+…, replicate+… "
        "(comma-separated; see bot/engines.py).",
    )
    comfyui_workflows: str = Field(
        default="",
        description="ComfyUI backends: a folder of API-format workflow files (txt2img.json, img2img.json, "
        "upscale.json, inpaint.json) with {{placeholders}}; empty = the bundled txt2img/img2img (engine/adapters).",
    )
    replicate_inputs: str = Field(
        default="",
        description="Predictions-API backends: a TOML file mapping our fields to the model's input names; "
        "empty = the bundled engine/adapters/replicate_inputs.toml.",
    )
    engine_batch_max: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        default="auto",
        description="Local engine: jobs per denoising call; auto = from the resolution and free GPU memory "
        "(1 on CPU).",
    )
    engine_preview_interval: float = Field(
        default=1.0,
        description="Local engine: seconds between a job's previews (0 = every step, negative = none).",
    )
    engine_torch_compile: bool = Field(
        default=False,
        description="Local engine: compile the UNet at start-up (cache in DATA_DIR/inductor-cache).",
    )
    engine_safety_checker: str = Field(
        default="",
        description="Local engine: a safety checker run on every result (empty or off = none; or a hub id "
        "such as CompVis/stable-diffusion-safety-checker, or a local folder). A flagged job is refused as "
        "a whole; nothing is posted or charged. Engine servers use their own ENGINE_SAFETY_CHECKER.",
    )
    admin_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    admin_role_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    buttons_for_everyone: bool = Field(
        default=False, description="Let anyone use a result's buttons, not only its owner and admins."
    )
    tiers_file: Path | None = Field(
        default=None, description="Tiers TOML; default: the bundled bot/tiers.toml."
    )
    banned_words: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Comma-separated terms refused in prompts (more with /admin banned-words)."
    )
    image_urls: bool = Field(
        default=False, description="Allow image links in prompts (fetched safely); attachments always work."
    )
    permutation_confirm_over: int = Field(
        default=4, ge=1, le=40, description="More jobs than this from one prompt ask for a confirmation."
    )
    aging_seconds: float = Field(
        default=60, gt=0, description="Seconds of waiting that raise a job's priority by one tier level."
    )
    relax_max_wait: float = Field(
        default=1800, gt=0, description="Seconds a relax job waits at most before it goes ahead of fast jobs."
    )
    queue_timeout: float = Field(
        default=6 * 3600, gt=0, description="Seconds a job may wait before TIMED_OUT."
    )
    processing_timeout: float = Field(default=900, gt=0, description="Seconds a job may run on an engine.")
    storing_timeout: float = Field(default=300, gt=0, description="Seconds to store and post a result.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Runs a job gets when the bot stops while it runs; past it the job ends FAILED.",
    )
    progress_edit_interval: float = Field(
        default=1.5, ge=0.2, le=30, description="Seconds between progress edits of one message."
    )
    progress_edits_per_second: float = Field(
        default=20,
        gt=0,
        le=45,
        description="Progress edits per second for the whole bot; each job edits less often as more run "
        "(see bot/edit_budget.py; Discord allows 50 requests/s in all).",
    )
    gallery_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve the web gallery on this port (0: any free one) and answer /gallery with signed "
        "links; empty = off.",
    )
    gallery_host: str = Field(default="127.0.0.1", description="Address the gallery listens on.")
    gallery_url: str | None = Field(
        default=None,
        description="The gallery's public base URL in links (default http://GALLERY_HOST:GALLERY_PORT).",
    )
    gallery_secret: SecretStr | None = Field(
        default=None, description="HMAC key that signs gallery links; required with GALLERY_PORT."
    )
    gallery_link_minutes: float = Field(
        default=60, gt=0, le=7 * 24 * 60, description="Minutes a /gallery link stays valid."
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="'json': one JSON object per line (with the job id where there is one)."
    )
    lease_seconds: float = Field(
        default=15,
        ge=1,
        le=600,
        description="Postgres only: the active bot process's lease; a standby takes over within this time "
        "after the active one dies (see bot/lease.py).",
    )
    image_store: str = Field(
        default="",
        description="Where result images go: empty = DATA_DIR/images, a folder path, or s3://BUCKET/PREFIX.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, R2, ...); empty: AWS S3."
    )
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str = "us-east-1"
    image_public_base_url: str | None = Field(
        default=None,
        description="Public base URL (a CDN in front of the bucket) for image links; empty: presigned links.",
    )
    image_link_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600, description="How long a presigned image link works."
    )
    http_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve /healthz and /metrics on this port (off when unset)."
    )
    http_host: str = Field(default="127.0.0.1", description="Address of the /healthz and /metrics server.")

    @field_validator("admin_user_ids", "admin_role_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
            try:
                return frozenset(int(p) for p in parts)
            except ValueError as exc:
                raise ValueError("must be Discord user ids (numbers) separated by commas") from exc
        return value

    @field_validator("banned_words", mode="before")
    @classmethod
    def _split_words(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(word.strip() for word in value.split(",") if word.strip())
        return value

    @field_validator("discord_token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(TOKEN_HELP)
        return value

    @model_validator(mode="after")
    def _gallery_needs_secret(self) -> Settings:
        secret = self.gallery_secret.get_secret_value() if self.gallery_secret else ""
        if self.gallery_port is not None and len(secret) < 16:
            raise ValueError(
                "GALLERY_SECRET must be set (16+ random characters) when GALLERY_PORT is set; "
                "it signs the gallery links, e.g. GALLERY_SECRET=$(openssl rand -hex 32)"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'imaginebot.db').resolve()}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and ``.env``), raising ``SettingsError`` with clear lines."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"]).upper() or "settings"
        if name == "DISCORD_TOKEN" and error["type"] == "missing":
            lines.append(TOKEN_HELP)
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(message if message == TOKEN_HELP else f"{name}: {message}")
    return "\n".join(lines)
