"""Shared fixtures: hermetic environment, a tiny diffusers model saved like a user's model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SD1.x pipeline saved with ``save_pretrained``, loaded through ``MODEL`` like any folder."""
    from engine.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-model"))


pytest_plugins = ["tests.emulator_fixtures", "tests.postgres", "tests.s3", "pytester"]
