"""No host synchronisation per denoising step: the engine's own code never waits for the device in the loop.

On a GPU a ``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()`` or ``bool(tensor)`` makes the CPU wait until the
GPU has caught up, so the next step's kernels are not queued in time. Here (CPU) every such call made from the
engine's modules is counted while a job runs: a count that grows with the number of steps is a per-step sync.
The one place allowed to read pixels is ``PreviewCopy.jpegs``, which runs only after the copy's CUDA event
says it is done. On a GPU, ``test_step_callback_never_syncs_on_cuda`` asks torch itself
(``torch.cuda.set_sync_debug_mode("error")``) during every step callback.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import torch

from engine import driver
from engine.base import ProgressUpdate
from tests.engine.support import small_request

SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")
ALLOWED = {("engine.previews", "jpegs")}  # reads the pinned host copy once its event is done

request = partial(small_request, prompt="a red fox", n=2, chaos=60)  # chaos: a guidance scale per row


@pytest.fixture
def engine_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts syncing tensor calls made directly from ``engine.*`` code, by ``module.function``."""
    counts: Counter[str] = Counter()

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            if module.startswith("engine.") and (module, caller.f_code.co_name) not in ALLOWED:
                counts[f"{module}.{caller.f_code.co_name}:{name}"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    yield counts


def run(engine: Any, steps: int) -> list[ProgressUpdate]:
    updates: list[ProgressUpdate] = []
    asyncio.run(engine.generate(request(steps=steps), updates.append))
    return updates


def test_no_syncing_call_per_step(tiny_engine, engine_syncs):
    run(tiny_engine, 2)  # warm-up outside the count
    engine_syncs.clear()
    short = run(tiny_engine, 2)
    few = Counter(engine_syncs)
    engine_syncs.clear()
    long = run(tiny_engine, 8)
    many = Counter(engine_syncs)
    assert all(u.preview is not None for u in short + long)  # previews were made at every step
    assert len(long) == 8
    assert many == few, f"syncing calls grow with the step count: {few} (2 steps) vs {many} (8 steps)"
    assert sum(few.values()) <= 2, few  # the final decode's one copy of the pixels (and nothing else)


def test_the_counter_catches_a_per_step_copy(tiny_engine, engine_syncs, monkeypatch):
    """The check above can fail: the old previews (``latents_to_rgb``: a blocking copy to the host and
    ``.numpy()`` at every step) are counted once per step."""
    from engine import previews

    def old_previews(latents: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(previews.latents_to_rgb(latents, factors))[None]

    monkeypatch.setattr(driver, "rgb_on_device", old_previews)
    run(tiny_engine, 2)
    engine_syncs.clear()
    run(tiny_engine, 2)
    few = sum(engine_syncs.values())
    engine_syncs.clear()
    run(tiny_engine, 8)
    assert sum(engine_syncs.values()) == few + 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_callback_never_syncs_on_cuda(tiny_model_dir, monkeypatch):
    from engine.local import LocalDiffusersEngine

    original = driver.StepCallback.__call__

    def strict(self: driver.StepCallback, *args: Any) -> Any:
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(driver.StepCallback, "__call__", strict)
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cuda", preview_interval=0)

    async def go() -> list[ProgressUpdate]:
        await engine.start()
        try:
            updates: list[ProgressUpdate] = []
            await engine.generate(request(steps=6), updates.append)
            return updates
        finally:
            await engine.close()

    updates = asyncio.run(go())
    assert len(updates) == 6 and any(u.preview for u in updates)
