"""The sandbox's own settings (``SANDBOX_*``), read from the environment and ``.env`` like the bot's.

The bot inside the sandbox reads every other setting as usual (``MODEL``, ``ENGINE``, ``BANNED_WORDS``…),
except the ones the sandbox must own: the Discord token and endpoints (its emulator), the data directory and
database (``SANDBOX_DATA_DIR``, never the real bot's), and the admin ids (its admin user).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TINY_RESOLUTION = 128
TINY_STEPS = 10


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    sandbox_host: str = Field(
        default="127.0.0.1", description="Address of the web page (loopback by default)."
    )
    sandbox_port: int = Field(
        default=8090, ge=0, le=65535, description="Port of the web page (0: any free one)."
    )
    sandbox_data_dir: Path = Field(
        default=Path("./data/sandbox"), description="The sandbox's SQLite database, images and tiny model."
    )
    model: str | None = Field(
        default=None,
        description="A real model (as for the bot); unset without a GPU: the tiny noise-only model. "
        "MODEL=tiny forces the tiny one.",
    )
    device: str = "auto"
    model_resolution: int | None = Field(
        default=None,
        ge=64,
        le=2048,
        description=f"As for the bot; the tiny model's default is {TINY_RESOLUTION}.",
    )
    model_steps: int | None = Field(
        default=None, ge=1, le=150, description=f"As for the bot; the tiny model's default is {TINY_STEPS}."
    )
    progress_edit_interval: float = Field(default=0.5, ge=0.2, le=30)
