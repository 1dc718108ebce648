"""Fixtures for engine tests: the tiny model as a single file, and an engine on it (``tiny_model_dir`` is in
tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers / huggingface_hub are imported
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny weights as one LDM-layout .safetensors checkpoint."""
    from engine.tiny import save_tiny_single_file

    return save_tiny_single_file(tmp_path_factory.mktemp("tiny-ckpt") / "tiny-sd.safetensors")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Iterator[object]:
    """A started ``LocalDiffusersEngine`` on the tiny model (CPU), shared by the session.

    The engine keeps no event-loop state, so it can serve every test's own loop.
    """
    from engine.local import LocalDiffusersEngine

    engine = LocalDiffusersEngine(
        str(tiny_model_dir), device="cpu", preview_interval=0
    )  # a preview every step
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="module")
def batching_engine(tiny_model_dir: Path) -> Iterator[object]:
    """An engine that gathers up to 4 jobs for half a second into one denoising call."""
    from engine.local import LocalDiffusersEngine

    engine = LocalDiffusersEngine(
        str(tiny_model_dir), device="cpu", max_batch=4, batch_window=0.5, preview_interval=0
    )
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())
