"""Engine-side settings: one typed object from the environment (and an optional ``.env``).

The model settings share their names with the bot's (``MODEL``, ``MODEL_RESOLUTION``, ``MODEL_STEPS``,
``DEVICE``), so one ``.env`` configures both. Engine-only settings start with ``ENGINE_`` (or are the
documented ``MODELS_FILE``). This module must not import ``bot``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettingsError(Exception):
    """Settings are missing or invalid; ``str()`` is one line per problem."""


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    model: str = Field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Default model: hub id, diffusers folder, single .safetensors file, or an alias of MODELS_FILE.",
    )
    model_resolution: int = Field(default=512, ge=64, le=2048)
    model_steps: int = Field(default=25, ge=1, le=150)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    models_file: Path | None = Field(default=None, description="TOML registry of model aliases.")
    engine_token: SecretStr | None = Field(default=None, description="Bearer token of the engine server.")
    engine_dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(
        default="auto", description="auto: fp16 on CUDA, fp32 on CPU."
    )
    engine_batch_max: int = Field(
        default=1, ge=1, le=64, description="Jobs per denoising call; 1 = no batching."
    )
    engine_batch_window_ms: float = Field(
        default=25.0, ge=0, le=5000, description="How long a job waits for compatible companions."
    )
    engine_preview_every: int = Field(default=1, ge=0, description="A preview every N steps; 0 = none.")
    engine_preview_decoder: str = Field(
        default="latent-rgb",
        description="Previews: latent-rgb (a cheap matrix), or a path / hub id of a TAESD AutoencoderTiny "
        "(real-looking previews; a GPU option, ~1.2 s per 512² preview on CPU).",
    )
    engine_safety_checker: str = Field(
        default="",
        description="Safety checker run on every result: empty or off (default), or a hub id "
        "(CompVis/stable-diffusion-safety-checker) or local folder of a StableDiffusionSafetyChecker. "
        "A job with a flagged image is refused as a whole.",
    )
    engine_channels_last: bool = False
    engine_torch_compile: bool = False
    engine_model_cache_gb: float = Field(
        default=0.0, ge=0, description="Memory budget of cached pipelines; 0 = keep only one model."
    )
    engine_upscale_tile: int = Field(
        default=768, ge=64, le=4096, description="Creative/subtle upscales larger than this run in tiles."
    )
    engine_max_request_mb: float = Field(default=32.0, gt=0, le=512)
    engine_max_jobs_kept: int = Field(
        default=1000, ge=10, description="Finished jobs (and their results) the server keeps at most."
    )
    engine_data_dir: Path = Field(
        default=Path("./data/engine"), description="The engine server's folder: its SQLite job database."
    )
    engine_database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL of the job database; default SQLite in ENGINE_DATA_DIR.",
    )
    engine_results_ttl: float = Field(
        default=86400.0, gt=0, description="Seconds finished jobs and their images stay retrievable."
    )
    engine_queue_timeout: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds a job may wait in the queue before it ends TIMED_OUT (0: no limit).",
    )
    engine_run_timeout: float = Field(
        default=900.0, ge=0, description="Seconds a job may generate before it ends TIMED_OUT (0: no limit)."
    )
    engine_store_timeout: float = Field(
        default=120.0, ge=0, description="Seconds a job may spend encoding its results (0: no limit)."
    )
    engine_webhook_secret: SecretStr | None = Field(
        default=None, description="Signs webhook deliveries (HMAC-SHA256; see engine/server/webhooks.py)."
    )
    engine_webhook_allow_private: bool = Field(
        default=False, description="Allow webhooks to private, loopback and link-local addresses."
    )
    log_level: str = "INFO"


def database_url(settings: EngineSettings) -> str:
    """ENGINE_DATABASE_URL, else a SQLite file in ENGINE_DATA_DIR."""
    if settings.engine_database_url:
        return settings.engine_database_url
    return f"sqlite+aiosqlite:///{(settings.engine_data_dir / 'engine-jobs.db').resolve()}"


def load_engine_settings(**overrides: object) -> EngineSettings:
    try:
        return EngineSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]).upper() or "settings"
            lines.append(f"{name}: {str(error['msg']).removeprefix('Value error, ')}")
        raise EngineSettingsError("\n".join(lines)) from None
