"""Shared fixtures: hermetic environment, a tiny diffusers model saved like a user's model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one torch (OpenMP) thread each, inherited by the processes they
    # start. With torch's default (one thread per core) in every worker, the threads' spin-waits starve each
    # other: 4 copies of test_edit_budget.py's many-jobs test took over 60 s each instead of 24 s.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SD1.x pipeline saved with ``save_pretrained``, loaded through ``MODEL`` like any folder."""
    from engine.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-model"))


pytest_plugins = ["tests.emulator_fixtures", "tests.postgres", "tests.s3", "pytester"]
