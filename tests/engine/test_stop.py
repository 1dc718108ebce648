"""``--stop``: the local engine ends denoising early and decodes that step's predicted x0."""

import asyncio
import math
from functools import partial

import numpy as np
import pytest

from engine.base import EngineError, GenerationRequest, ProgressUpdate
from engine.local import batch_key, stop_step
from tests.engine.support import small_request

STEPS = 6


request = partial(small_request, steps=STEPS, seed=7, n=2)


def run(engine, req: GenerationRequest) -> tuple[list, list[ProgressUpdate]]:
    updates: list[ProgressUpdate] = []
    images = asyncio.run(engine.generate(req, updates.append))
    return images, updates


def test_stop_step():
    assert stop_step(6, 0.5) == 3
    assert stop_step(25, 0.5) == 13
    assert stop_step(10, 0.3) == 3  # 10 * 0.3 is 3.0000000000000004 in floats
    assert stop_step(3, 0.1) == 1
    assert stop_step(6, 1.0) == 6


def test_stop_ends_early_and_decodes_x0(tiny_engine):
    full, full_updates = run(tiny_engine, request())
    stopped, updates = run(tiny_engine, request(stop=0.5))
    assert [u.step for u in full_updates] == list(range(1, STEPS + 1))
    assert [u.step for u in updates] == list(range(1, math.ceil(STEPS * 0.5) + 1))
    assert updates[-1].step == math.ceil(STEPS * 0.5)
    assert len(stopped) == 2 and all(image.size == (64, 64) for image in stopped)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(stopped, full, strict=True))


def test_stop_one_is_the_default(tiny_engine):
    explicit, _ = run(tiny_engine, request(stop=1.0))
    default, _ = run(tiny_engine, request())
    assert request(stop=1.0) == request()
    for a, b in zip(explicit, default, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_stop_is_deterministic(tiny_engine):
    a, _ = run(tiny_engine, request(stop=0.5))
    b, _ = run(tiny_engine, request(stop=0.5))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def test_stop_is_part_of_the_batch_key():
    assert batch_key(request(stop=0.5), "m") != batch_key(request(), "m")


def test_stop_out_of_range_is_refused(tiny_engine):
    with pytest.raises(EngineError, match="stop"):
        asyncio.run(tiny_engine.generate(request(stop=0.05)))
