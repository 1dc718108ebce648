"""Every operation on the tiny pipeline: output size and mode, kept pixels, reproducible seeds, batching."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from engine.base import (
    OUTPAINT_OPERATIONS,
    CancelToken,
    EngineCancelled,
    EngineError,
    Operation,
    engine_seconds_of,
)
from engine.geometry import outpaint_layout, outpaint_mask, tile_boxes, upscaled_size
from engine.local import LocalDiffusersEngine, batch_key, seamless
from engine.registry import LRUCache, ModelRegistry, registry_from_dict
from tests.engine.support import pixels, small_request

request = partial(small_request, prompt="a red fox in the snow", n=2)


def source(width: int = 40, height: int = 24) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def close(a: Image.Image, b: Image.Image) -> bool:
    difference = np.abs(pixels(a) - pixels(b))
    return a.size == b.size and difference.max() <= 3 and difference.mean() < 0.5


# -- geometry --------------------------------------------------------------------------------------


@given(st.integers(8, 600), st.integers(8, 600), st.sampled_from(sorted(OUTPAINT_OPERATIONS)))
def test_outpaint_layout_holds_the_original_on_a_multiple_of_8_canvas(width, height, operation):
    layout = outpaint_layout(width, height, operation)
    assert layout.width % 8 == 0 and layout.height % 8 == 0
    left, top, right, bottom = layout.box
    assert 0 <= left and 0 <= top and right <= layout.width and bottom <= layout.height
    assert (right - left, bottom - top) == (width, height)
    assert layout.width * layout.height > width * height or operation == Operation.MAKE_SQUARE


def test_outpaint_layouts():
    assert outpaint_layout(64, 64, Operation.ZOOM_OUT_2X).box == (32, 32, 96, 96)
    assert outpaint_layout(64, 64, Operation.ZOOM_OUT_1_5X).box == (16, 16, 80, 80)
    assert outpaint_layout(80, 48, Operation.MAKE_SQUARE).box == (0, 16, 80, 64)
    assert outpaint_layout(64, 48, Operation.PAN_LEFT).box == (32, 0, 96, 48)
    assert outpaint_layout(64, 48, Operation.PAN_RIGHT).box == (0, 0, 64, 48)
    assert outpaint_layout(64, 48, Operation.PAN_UP).box == (0, 24, 64, 72)
    assert outpaint_layout(64, 48, Operation.PAN_DOWN).box == (0, 0, 64, 48)
    mask = np.asarray(outpaint_mask(outpaint_layout(64, 48, Operation.PAN_DOWN)))
    assert mask.shape == (72, 64) and (mask[:48] == 0).all() and (mask[48:] == 255).all()
    with pytest.raises(ValueError):
        outpaint_layout(64, 64, Operation.TXT2IMG)


@given(st.integers(8, 900), st.integers(8, 900), st.sampled_from([64, 96, 256]))
def test_tile_boxes_cover_the_image(width, height, tile):
    boxes = tile_boxes(width, height, tile, 16)
    covered = np.zeros((height, width), bool)
    for left, top, right, bottom in boxes:
        assert right <= width and bottom <= height
        covered[top:bottom, left:right] = True
    assert covered.all()


def test_upscaled_size():
    assert upscaled_size(80, 56) == (160, 112)
    assert upscaled_size(63, 33) == (128, 72)


# -- operations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [Operation.VARY_SUBTLE, Operation.VARY_STRONG])
async def test_vary(tiny_engine, operation):
    images = await tiny_engine.generate(request(operation=operation, init_image=source()))
    assert [(i.size, i.mode) for i in images] == [((64, 64), "RGB")] * 2
    again = await tiny_engine.generate(request(operation=operation, init_image=source()))
    assert all(close(a, b) for a, b in zip(images, again, strict=True))


async def test_vary_subtle_stays_closer_to_the_source_than_strong(tiny_engine):
    init = source(64, 64)
    subtle = await tiny_engine.generate(
        request(operation=Operation.VARY_SUBTLE, init_image=init, n=1, steps=8)
    )
    strong = await tiny_engine.generate(
        request(operation=Operation.VARY_STRONG, init_image=init, n=1, steps=8)
    )
    assert not np.array_equal(pixels(subtle[0]), pixels(strong[0]))


@pytest.mark.parametrize("operation", [Operation.UPSCALE_SUBTLE, Operation.UPSCALE_CREATIVE])
async def test_upscale_doubles_the_size(tiny_engine, operation):
    images = await tiny_engine.generate(request(operation=operation, init_image=source(40, 24), n=1, steps=2))
    assert [(i.size, i.mode) for i in images] == [((80, 48), "RGB")]
    again = await tiny_engine.generate(request(operation=operation, init_image=source(40, 24), n=1, steps=2))
    assert np.array_equal(pixels(images[0]), pixels(again[0]))


async def test_large_upscale_runs_in_tiles_with_previews_of_the_first_tile_only(tiny_model_dir):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu", upscale_tile=64, preview_interval=0)
    await engine.start()
    try:
        updates = []
        images = await engine.generate(
            request(operation=Operation.UPSCALE_CREATIVE, init_image=source(64, 48), n=1, steps=5),
            updates.append,
        )
        assert images[0].size == (128, 96)
        tiles = len(tile_boxes(128, 96, 64, 8))
        assert tiles > 1
        assert [u.step for u in updates] == list(range(1, 2 * tiles + 1))  # int(5 * 0.45) = 2 steps per tile
        assert all(u.total == 2 * tiles for u in updates)
        assert [u.preview is not None for u in updates] == [True, True] + [False] * (2 * tiles - 2)
    finally:
        await engine.close()


@pytest.mark.parametrize("operation", sorted(OUTPAINT_OPERATIONS))
async def test_outpaint_keeps_the_original_pixels_exactly(tiny_engine, operation):
    original = source(40, 24)
    layout = outpaint_layout(40, 24, operation)
    images = await tiny_engine.generate(request(operation=operation, init_image=original, steps=2))
    assert [(i.size, i.mode) for i in images] == [((layout.width, layout.height), "RGB")] * 2
    for image in images:
        assert np.array_equal(np.asarray(image.crop(layout.box)), np.asarray(original))
    again = await tiny_engine.generate(request(operation=operation, init_image=original, steps=2))
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(images, again, strict=True))
    other = await tiny_engine.generate(request(operation=operation, init_image=original, steps=2, seed=7))
    assert not np.array_equal(pixels(images[0]), pixels(other[0]))


async def test_tile_mode_changes_the_image_and_restores_the_convs(tiny_engine):
    plain = await tiny_engine.generate(request(n=1))
    tiled = await tiny_engine.generate(request(n=1, tile=True))
    assert tiled[0].size == (64, 64)
    assert not np.array_equal(pixels(plain[0]), pixels(tiled[0]))
    pipe = tiny_engine._pipelines(None).txt2img
    convs = [m for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.padding_mode == "zeros" for c in convs)
    with seamless(pipe, True):
        assert all(c.padding_mode == "circular" for c in convs)


async def test_image_operations_need_an_image(tiny_engine):
    for operation in (Operation.VARY_SUBTLE, Operation.UPSCALE_CREATIVE, Operation.PAN_LEFT):
        with pytest.raises(EngineError, match="needs an init image"):
            await tiny_engine.generate(request(operation=operation))


# -- models ----------------------------------------------------------------------------------------


async def test_per_request_model_and_lru_cache(tiny_model_dir, tiny_single_file):
    registry = registry_from_dict(
        {
            "default": "tiny",
            "models": {
                "tiny": {"source": str(tiny_model_dir), "steps": 4, "resolution": 64, "guidance": 5.0},
                "file": {"source": str(tiny_single_file), "config": str(tiny_model_dir)},
            },
        }
    )
    engine = LocalDiffusersEngine("tiny", device="cpu", registry=registry, cache_bytes=0)
    await engine.start()
    try:
        assert engine.model_spec().steps == 4 and engine.model_spec().guidance == 5.0
        a = await engine.generate(request(n=1))
        b = await engine.generate(request(n=1, model="file"))
        assert engine.loaded_models() == ["file"]  # budget 0: one model at a time
        assert close(a[0], b[0])  # the same weights, loaded from the single file
        with pytest.raises(EngineError, match="unknown model"):
            await engine.generate(request(model="../../etc/passwd"))
    finally:
        await engine.close()


def test_registry_validation():
    with pytest.raises(EngineError, match="alias"):
        registry_from_dict({"models": {"bad alias!": {"source": "x"}}})
    with pytest.raises(EngineError, match="source"):
        registry_from_dict({"models": {"a": {}}})
    assert ModelRegistry.single("x").get(None).source == "x"


def test_lru_cache_evicts_the_least_recently_used():
    released = []
    cache: LRUCache[str, int] = LRUCache(10, lambda v: v, released.append)
    assert cache.get("a", lambda: 4) == 4
    cache.get("b", lambda: 4)
    cache.get("a", lambda: 99)  # a is now most recent
    cache.get("c", lambda: 4)
    assert released == [4] and cache.keys() == ["a", "c"]


# -- batching --------------------------------------------------------------------------------------


def test_batch_keys():
    assert batch_key(request(), "m") == batch_key(
        request(prompt="other", seed=1, n=4, negative_prompt="x"), "m"
    )
    assert batch_key(request(), "m") != batch_key(request(steps=4), "m")
    assert batch_key(request(), "m") != batch_key(request(guidance=1.0), "m")  # CFG off
    assert batch_key(request(), "m") == batch_key(  # each row gets its own guidance, weights and chaos
        request(guidance=4.0, chaos=50, prompt_parts=(("a", 2.0), ("b", -1.0))), "m"
    )
    assert batch_key(request(), "m") != batch_key(request(), "other")
    assert batch_key(request(operation=Operation.PAN_LEFT, init_image=source()), "m") is None


async def test_batched_results_equal_unbatched(tiny_engine, batching_engine):
    init = source(64, 64)
    requests = [
        request(prompt="a fox", seed=1, n=2),
        request(prompt="a cat", seed=2, n=1, negative_prompt="blurry"),
        request(prompt="a dog", seed=3, n=1, guidance=4.0),
        request(prompt="a bird", seed=6, n=2, chaos=80, prompt_parts=(("a bird", 2.0), ("rain", -0.5))),
    ]
    vary = [
        request(operation=Operation.VARY_SUBTLE, init_image=init, seed=s, n=1, prompt=p)
        for s, p in [(4, "x"), (5, "y")]
    ]
    alone = [await tiny_engine.generate(r) for r in requests + vary]
    progress: list[list[int]] = [[] for _ in requests + vary]
    batches_before = batching_engine.stats.batches
    started = time.perf_counter()
    together = await asyncio.gather(
        *(
            batching_engine.generate(r, lambda u, i=i: progress[i].append(u.step))
            for i, r in enumerate(requests + vary)
        )
    )
    wall = time.perf_counter() - started
    assert batching_engine.stats.batches - batches_before == 2  # one txt2img batch, one vary batch
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    assert progress[:4] == [[1, 2, 3]] * 4
    # each job is charged its rows' share of its batch, not the batch's whole time
    shares = [engine_seconds_of(result) for result in together]
    assert all(share is not None and share > 0 for share in shares)
    assert shares[0] == pytest.approx(2 * shares[2]) and shares[3] == pytest.approx(shares[0])  # 2 rows vs 1
    assert (
        sum(shares) <= wall
    )  # the shares split the two calls' time; wall time would charge it ~4 times over


async def test_cancelling_one_job_of_a_batch_keeps_the_others(batching_engine):
    token = CancelToken()

    def cancel_at_two(update):
        if update.step == 2:
            token.cancel()

    results = await asyncio.gather(
        batching_engine.generate(request(seed=1, steps=6), cancel_at_two, token),
        batching_engine.generate(request(seed=2, steps=6)),
        return_exceptions=True,
    )
    assert isinstance(results[0], EngineCancelled)
    assert isinstance(results[1], list) and len(results[1]) == 2


async def test_out_of_memory_splits_the_batch(batching_engine, monkeypatch):
    pipes = batching_engine._pipelines(None)
    real = pipes.txt2img
    sizes = []

    def limited(**kwargs):
        rows = len(kwargs["generator"])
        sizes.append(rows)
        if rows > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(**kwargs)

    monkeypatch.setattr(pipes, "txt2img", limited)
    results = await asyncio.gather(*(batching_engine.generate(request(seed=s, n=1)) for s in range(4)))
    assert [len(r) for r in results] == [1, 1, 1, 1]
    assert sizes == [4, 2, 2]
    assert batching_engine.slots == 4
