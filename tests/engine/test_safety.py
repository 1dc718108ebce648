"""The optional safety checker: a tiny random-weight ``StableDiffusionSafetyChecker`` whose real code decides,
steered only through its own concept embeddings and thresholds."""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np
import pytest
from PIL import Image

from engine.base import EngineError, EngineFlagged, Operation
from engine.local import LocalDiffusersEngine
from engine.safety import SafetyChecker, load_safety_checker, safety_checker_source
from engine.settings import load_engine_settings
from engine.tiny import (
    ALWAYS_FLAG,
    NEVER_FLAG,
    aim_safety_checker,
    build_tiny_safety_checker,
    save_tiny_safety_checker,
    set_safety_thresholds,
)
from tests.engine.support import small_request

request = partial(small_request, steps=2, n=2)


def noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True)
    )


async def started(engine: LocalDiffusersEngine) -> LocalDiffusersEngine:
    await engine.start()
    return engine


@pytest.fixture(scope="module")
def flagging_engine(tiny_model_dir):
    engine = LocalDiffusersEngine(
        str(tiny_model_dir), device="cpu", safety_checker=build_tiny_safety_checker(flag=True)
    )
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


def test_the_thresholds_decide():
    images = [noise(seed) for seed in range(3)]
    assert build_tiny_safety_checker(flag=True).flags(images) == [True] * 3
    checker = build_tiny_safety_checker(flag=False)
    assert checker.flags(images) == [False] * 3 and checker.flags([]) == []
    set_safety_thresholds(checker, ALWAYS_FLAG)
    assert checker.flags(images) == [True] * 3
    set_safety_thresholds(checker, NEVER_FLAG, special_care=ALWAYS_FLAG)  # special care alone flags nothing
    assert checker.flags(images) == [False] * 3


def test_an_aimed_checker_flags_only_the_chosen_images():
    images = [noise(seed) for seed in range(6)]
    checker = build_tiny_safety_checker()
    margin = aim_safety_checker(checker, images[:2], images[2:])
    assert margin > 0.001  # above 0.0005, where the checker's rounding to 3 decimals blurs it
    assert checker.flags(images) == [True, True, False, False, False, False]
    assert checker.flags(images[::-1]) == [False, False, False, False, True, True]


@pytest.mark.parametrize(
    "operation",
    [
        Operation.TXT2IMG,
        Operation.IMG2IMG,
        Operation.VARY_SUBTLE,
        Operation.UPSCALE_SUBTLE,
        Operation.PAN_LEFT,
        Operation.ZOOM_OUT_2X,
    ],
)
async def test_a_flagged_job_is_refused_for_every_operation(flagging_engine, operation):
    init = noise(1, (48, 32)) if operation.needs_image else None
    updates = []
    with pytest.raises(EngineFlagged, match="safety filter flagged") as raised:
        await flagging_engine.generate(request(operation=operation, init_image=init), updates.append)
    assert isinstance(raised.value, EngineError)  # callers that know only EngineError still fail the job
    assert updates  # it really ran; the check comes after the images are made


async def test_a_clean_job_passes_with_the_same_images(tiny_model_dir, tiny_engine):
    checker = build_tiny_safety_checker(flag=False)
    calls: list[int] = []
    flags = checker.flags
    checker.flags = lambda images: calls.append(len(images)) or flags(images)  # type: ignore[method-assign]
    engine = await started(LocalDiffusersEngine(str(tiny_model_dir), device="cpu", safety_checker=checker))
    try:
        images = await engine.generate(request(n=3))
        assert same(images, await tiny_engine.generate(request(n=3)))  # the checker changes no pixel
        assert calls == [3]
    finally:
        await engine.close()


async def test_in_a_batch_only_the_flagged_job_fails(tiny_model_dir):
    checker = build_tiny_safety_checker(flag=False)
    engine = await started(
        LocalDiffusersEngine(
            str(tiny_model_dir), device="cpu", max_batch=3, batch_window=0.5, safety_checker=checker
        )
    )
    jobs = [request(seed=1), request(seed=2, prompt="a cat"), request(seed=3, n=1)]
    try:
        batches = engine.stats.batches
        first = await asyncio.gather(*(engine.generate(r) for r in jobs))
        assert engine.stats.batches == batches + 1  # one denoising call for the three jobs
        # the checker, aimed at the second job's images only, now refuses that job and keeps the others
        margin = aim_safety_checker(checker, first[1], first[0] + first[2])
        assert margin > 0.001  # ~0.004 here: the tiny model's images are alike
        second = await asyncio.gather(*(engine.generate(r) for r in jobs), return_exceptions=True)
        assert engine.stats.batches == batches + 2
        assert isinstance(second[1], EngineFlagged)
        assert same(second[0], first[0]) and same(second[2], first[2])  # type: ignore[arg-type]
        assert engine.stats.images == 2 * (2 + 2 + 1) - 2  # the refused job's images are not counted
    finally:
        await engine.close()


async def test_a_saved_checker_loads_from_its_folder(tiny_model_dir, tmp_path):
    folder = save_tiny_safety_checker(tmp_path / "checker", flag=True)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "preprocessor_config.json"}
    loaded = load_safety_checker(str(folder))
    assert isinstance(loaded, SafetyChecker) and loaded.flags([noise(1)]) == [True]
    assert loaded.feature_extractor.crop_size == {"height": 32, "width": 32}

    # as ENGINE_SAFETY_CHECKER, loaded with the model on the engine's device
    settings = load_engine_settings(
        model=str(tiny_model_dir), device="cpu", engine_safety_checker=str(folder)
    )
    engine = await started(LocalDiffusersEngine.from_settings(settings))
    try:
        assert engine._safety_checker is not None and engine._safety_checker.source == str(folder)
        with pytest.raises(EngineFlagged):
            await engine.generate(request(n=1))
    finally:
        await engine.close()


def test_a_pipeline_folder_with_a_safety_checker_subfolder(tmp_path):
    save_tiny_safety_checker(tmp_path / "model" / "safety_checker")
    build_tiny_safety_checker().feature_extractor.save_pretrained(tmp_path / "model" / "feature_extractor")
    (tmp_path / "model" / "safety_checker" / "preprocessor_config.json").unlink()
    loaded = load_safety_checker(str(tmp_path / "model"))
    assert loaded.flags([noise(1)]) == [False]
    assert loaded.feature_extractor.crop_size == {"height": 32, "width": 32}  # from feature_extractor/


def test_the_setting_is_off_by_default_and_with_off():
    assert load_engine_settings(model="m").engine_safety_checker == ""
    for off in ("", " ", "off", "OFF", "none", None):
        assert safety_checker_source(off) is None
    assert safety_checker_source(" CompVis/stable-diffusion-safety-checker ") == (
        "CompVis/stable-diffusion-safety-checker"
    )
    engine = LocalDiffusersEngine("m", device="cpu", safety_checker="off")
    assert engine._safety_source is None


def test_bad_sources_give_a_short_engine_error(tmp_path):
    with pytest.raises(EngineError, match="safety checker folder not found"):
        load_safety_checker(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="not a safety checker folder"):
        load_safety_checker(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(EngineError, match="could not load the safety checker") as raised:
        load_safety_checker(str(tmp_path / "broken"))
    assert "\n" not in str(raised.value)
    with pytest.raises(EngineError, match="could not be found locally or downloaded"):  # HF_HUB_OFFLINE=1
        load_safety_checker("nobody-here/no-such-safety-checker")


async def test_an_engine_with_a_bad_checker_does_not_start(tiny_model_dir, tmp_path):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu", safety_checker=str(tmp_path / "nope"))
    with pytest.raises(EngineError, match="safety checker folder not found"):
        await engine.start()
    await engine.close()
