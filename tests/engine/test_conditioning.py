"""Per-row prompt conditioning: compel weights, --chaos per tile, and per-row guidance on a real pipeline."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from engine.base import CancelToken, EngineCancelled, Operation
from engine.conditioning import (
    MAX_PROMPT_WINDOWS,
    RowGuidance,
    conditioning_arguments,
    guidance_scale,
    prompt_encoder,
    prompt_windows,
    rows_for,
)
from engine.seeds import tile_seeds
from tests.engine.support import pixels, small_request

request = small_request


@pytest.fixture(scope="module")
def pipe(tiny_engine):
    return tiny_engine._pipelines(None)


def test_row_guidance_is_its_largest_value_to_the_pipeline_and_per_row_on_tensors():
    scale = RowGuidance([4.0, 10.0])
    assert float(scale) == 10.0 and scale > 1 and scale - 1 == 9.0
    product = scale * torch.ones(2, 3, 2, 2)
    assert product[0].unique().tolist() == [4.0] and product[1].unique().tolist() == [10.0]
    assert torch.equal(torch.ones(2, 1) * scale, torch.tensor([[4.0], [10.0]]))
    assert scale * 2 == 20.0
    with pytest.raises(RuntimeError, match="2 rows"):
        scale * torch.ones(3, 4)
    assert pickle.loads(pickle.dumps(scale)).values == (4.0, 10.0)


def test_rows_carry_each_tiles_seed_guidance_and_noise():
    rows = rows_for(request(chaos=100, guidance=7.0))
    assert [r.seed for r in rows] == tile_seeds(42, 4)
    assert [r.guidance for r in rows] == [4.0, 6.0, 8.0, 10.0]
    assert [r.noise for r in rows] == [0.0, 0.3, 0.3, 0.3]
    assert isinstance(guidance_scale(rows), RowGuidance)
    assert guidance_scale(rows_for(request())) == 7.0 and type(guidance_scale(rows_for(request()))) is float
    weighted = rows_for(
        request(prompt="fox", negative_prompt="blur", prompt_parts=(("fox", 2.0), ("snow", -0.5)))
    )
    assert (
        weighted[0].weighted == '("fox", "snow").blend(2, -0.5)' and rows_for(request())[0].weighted is None
    )
    assert (weighted[0].plain_prompt, weighted[0].plain_negative) == ("fox", "blur, snow")


def test_a_plain_prompt_is_read_as_the_pipeline_reads_it(pipe):
    """Tile 0 of a chaos grid stays the faithful reading: compel's encoding equals the pipeline's own."""
    encoder = prompt_encoder(pipe.txt2img)
    assert encoder is not None
    arguments = conditioning_arguments(encoder, rows_for(request(n=1, negative_prompt="blurry")))
    own, own_negative = pipe.txt2img.encode_prompt("a red fox", "cpu", 1, True, "blurry")
    assert torch.allclose(arguments["prompt_embeds"], own, atol=1e-5)
    assert torch.allclose(arguments["negative_prompt_embeds"], own_negative, atol=1e-5)


def test_weights_blend_the_parts_embeddings(pipe):
    encoder = prompt_encoder(pipe.txt2img)

    def embed(**overrides) -> torch.Tensor:
        return conditioning_arguments(encoder, rows_for(request(n=1, **overrides)))["prompt_embeds"][0]

    fox, snow = embed(prompt="fox"), embed(prompt="snow")
    both = embed(prompt="fox", prompt_parts=(("fox", 1.0), ("snow", 1.0)))
    assert torch.allclose(both, (fox + snow) / 2, atol=1e-5)
    away = embed(prompt="fox", prompt_parts=(("fox", 2.0), ("snow", -0.5)))
    assert torch.allclose(away, (2 * fox - 0.5 * snow) / 1.5, atol=1e-5)
    assert not torch.allclose(away, fox, atol=1e-3)


def test_chaos_noise_is_per_tile_seeded_and_scaled(pipe):
    encoder = prompt_encoder(pipe.txt2img)
    calm = conditioning_arguments(encoder, rows_for(request()))["prompt_embeds"]
    wild = conditioning_arguments(encoder, rows_for(request(chaos=100)))["prompt_embeds"]
    again = conditioning_arguments(encoder, rows_for(request(chaos=100)))["prompt_embeds"]
    half = conditioning_arguments(encoder, rows_for(request(chaos=50)))["prompt_embeds"]
    assert torch.equal(wild, again)
    assert torch.equal(wild[0], calm[0])  # tile 0 is the faithful reading
    for tile in (1, 2, 3):
        ratio = (wild[tile] - calm[tile]).std() / calm[tile].std()
        assert 0.25 < ratio < 0.35, ratio  # 0.3 σ at chaos 100
        assert torch.allclose(half[tile] - calm[tile], (wild[tile] - calm[tile]) / 2, atol=1e-5)
    assert not torch.equal(wild[1] - calm[1], wild[2] - calm[2])  # each tile its own noise


async def test_chaos_changes_the_tiles_and_keeps_tile_zero_without_guidance(tiny_engine):
    calm = await tiny_engine.generate(request(guidance=1.0))
    wild = await tiny_engine.generate(request(guidance=1.0, chaos=100))
    assert np.array_equal(pixels(calm[0]), pixels(wild[0]))  # no guidance to spread, no noise on tile 0
    for tile in (1, 2, 3):  # the tiny random UNet barely listens to text: any change shows the noise arrived
        assert not np.array_equal(pixels(calm[tile]), pixels(wild[tile]))
    assert all(
        np.array_equal(pixels(a), pixels(b))
        for a, b in zip(wild, await tiny_engine.generate(request(guidance=1.0, chaos=100)), strict=True)
    )
    spread = await tiny_engine.generate(request(chaos=100))  # guidance on: tile 0 at 7 - 3 = 4, no noise
    assert np.array_equal(pixels(spread[0]), pixels((await tiny_engine.generate(request(guidance=4.0)))[0]))


async def test_weights_reach_the_images(tiny_engine):
    plain = await tiny_engine.generate(request(prompt="fox, snow", n=1))
    weighted = await tiny_engine.generate(
        request(prompt="fox", prompt_parts=(("fox", 1.0), ("snow", -0.9)), n=1)
    )
    assert not np.array_equal(pixels(plain[0]), pixels(weighted[0]))


# -- SDXL: two text encoders, pooled embeddings, zeros for an empty negative ----------------------------


@pytest.fixture(scope="module")
def sdxl_engine(tmp_path_factory):
    from engine.local import LocalDiffusersEngine
    from engine.tiny import build_tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl_pipeline().save_pretrained(folder)
    engine = LocalDiffusersEngine(str(folder), device="cpu")
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.mark.parametrize("negative", ["blurry", ""])
def test_sdxl_prompts_are_read_as_the_pipeline_reads_them(sdxl_engine, negative):
    pipe = sdxl_engine._pipelines(None).txt2img
    encoder = prompt_encoder(pipe)
    assert encoder is not None and encoder.zero_empty_negative
    arguments = conditioning_arguments(encoder, rows_for(request(n=1, negative_prompt=negative)))
    own = pipe.encode_prompt(  # as a plain `pipe(prompt)` call: no negative prompt means zeros on SDXL
        "a red fox",
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative or None,
    )
    names = (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    for name, expected in zip(names, own, strict=True):
        assert torch.allclose(arguments[name], expected, atol=1e-5), name


async def test_sdxl_grids_and_variations_take_weights_and_chaos(sdxl_engine):
    styled = request(chaos=100, guidance=1.0, prompt_parts=(("a red fox", 2.0), ("snow", -0.5)))
    grid = await sdxl_engine.generate(styled)
    assert len(grid) == 4 and all(image.size == (64, 64) for image in grid)
    assert np.array_equal(pixels(grid[1]), pixels((await sdxl_engine.generate(styled))[1]))
    calm = await sdxl_engine.generate(request(guidance=1.0, prompt_parts=styled.prompt_parts))
    assert np.array_equal(pixels(grid[0]), pixels(calm[0])) and not np.array_equal(
        pixels(grid[1]), pixels(calm[1])
    )
    vary = await sdxl_engine.generate(
        request(
            operation=Operation.VARY_SUBTLE, init_image=grid[0], chaos=50, prompt_parts=styled.prompt_parts
        )
    )
    assert len(vary) == 4


def test_each_distinct_text_is_encoded_once_per_batch(pipe):
    """Plain texts go through the pipeline's encoder, weighted ones through compel: each distinct one once."""
    encoder = prompt_encoder(pipe.txt2img)
    calls: dict[str, list[int]] = {"pipeline": [], "compel": []}

    class Counting:
        tokenizer = encoder.pipe.tokenizer

        def encode_prompt(self, prompt, **kwargs):
            calls["pipeline"].append(len(prompt))
            return encoder.pipe.encode_prompt(prompt=prompt, **kwargs)

    def compel(prompts):
        calls["compel"].append(len(prompts))
        return encoder.compel(prompts)

    parts = (("a cat", 1.0), ("a hat", 0.5))
    rows = (
        rows_for(request(chaos=50))
        + rows_for(request(prompt="a cat", seed=7, prompt_parts=parts))
        + rows_for(request(prompt="a cat", seed=9, prompt_parts=parts))
    )
    together = conditioning_arguments(dataclasses.replace(encoder, pipe=Counting(), compel=compel), rows)
    assert calls == {"pipeline": [2], "compel": [1]} and together["prompt_embeds"].shape[0] == 12
    alone = conditioning_arguments(encoder, rows_for(request(prompt="a cat", seed=7, prompt_parts=parts)))
    assert torch.allclose(together["prompt_embeds"][4:8], alone["prompt_embeds"], atol=1e-6)
    assert torch.allclose(together["negative_prompt_embeds"][4:8], alone["negative_prompt_embeds"], atol=1e-6)


# -- long prompts: read in windows of the text encoder, not cut at 77 tokens ------------------------------

FOX = "a red fox in the snow "
LONG = FOX * 7  # 98 tokens of the tiny tokenizer: two windows


def token_count(encoder, text: str) -> int:
    return len(encoder.pipe.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def test_a_long_prompt_is_read_in_windows(pipe):
    encoder = prompt_encoder(pipe.txt2img)
    long = LONG
    assert encoder.windows("a red fox") == ["a red fox"]
    assert 75 < token_count(encoder, long) <= 150 and len(encoder.windows(long)) == 2
    assert len(encoder.windows(FOX * 100)) == MAX_PROMPT_WINDOWS  # cut after about 300 tokens

    arguments = conditioning_arguments(encoder, rows_for(request(prompt=long, negative_prompt="blurry")))
    assert arguments["prompt_embeds"].shape[:2] == (4, 2 * 77)
    assert arguments["negative_prompt_embeds"].shape == arguments["prompt_embeds"].shape
    first, second = encoder.windows(long)
    own, negative = pipe.txt2img.encode_prompt(first, "cpu", 1, True, "blurry")
    rest = pipe.txt2img.encode_prompt(second, "cpu", 1, False)[0]
    empty = pipe.txt2img.encode_prompt("", "cpu", 1, False)[0]
    assert torch.allclose(arguments["prompt_embeds"][0], torch.cat([own[0], rest[0]]), atol=1e-5)
    assert torch.allclose(
        arguments["negative_prompt_embeds"][0], torch.cat([negative[0], empty[0]]), atol=1e-5
    )


@pytest.mark.parametrize("text", ["a " + "🦊" * 40, "狐狸在雪地里 " * 30, LONG])
def test_each_window_encodes_whole_and_cuts_no_character(pipe, text):
    """Decoding a window's tokens and encoding the text again can grow it (a character cut at the edge):
    such a window ends earlier, so nothing is lost to the encoder's 77-token cut."""
    encoder = prompt_encoder(pipe.txt2img)
    windows = encoder.windows(text)
    assert len(windows) > 1
    assert all(0 < token_count(encoder, window) <= 75 and "\ufffd" not in window for window in windows)


def test_the_end_of_a_long_prompt_reaches_the_conditioning(pipe):
    """Two prompts that differ only after token 75: diffusers would read them the same."""
    encoder = prompt_encoder(pipe.txt2img)

    def embeds(text: str) -> torch.Tensor:
        return conditioning_arguments(encoder, rows_for(request(prompt=text, n=1)))["prompt_embeds"][0]

    cat, dog = embeds(LONG + "with a cat"), embeds(LONG + "with a dog")
    assert torch.allclose(cat[:77], dog[:77]) and not torch.allclose(cat[77:], dog[77:])
    assert prompt_windows(encoder, request(prompt=LONG)) == 2
    assert prompt_windows(encoder, request(prompt="a fox", negative_prompt=LONG)) == 2
    # a weighted prompt is cut to one window (compel's blend); its negative may still be long
    parts = ((LONG, 1.0), ("rain", -0.5))
    assert prompt_windows(encoder, request(prompt=LONG, prompt_parts=parts)) == 1
    assert prompt_windows(None, request(prompt=LONG)) == 1


async def test_long_and_short_prompts_batch_apart_and_equal_their_runs_alone(tiny_engine, batching_engine):
    requests = [
        request(prompt="a fox", seed=1, n=2),
        request(prompt=LONG + "with a cat", seed=2, n=1),
        request(prompt="a cat", seed=3, n=1, negative_prompt=LONG + FOX),
        request(prompt="a dog", seed=4, n=1),
    ]
    alone = [await tiny_engine.generate(r) for r in requests]
    together = await asyncio.gather(*(batching_engine.generate(r) for r in requests))
    for a, b in zip(alone, together, strict=True):
        assert all(np.abs(pixels(x) - pixels(y)).max() <= 3 for x, y in zip(a, b, strict=True))
    dog = await tiny_engine.generate(request(prompt=LONG + "with a dog", seed=2, n=1))
    assert not np.array_equal(pixels(alone[1][0]), pixels(dog[0]))  # the words after token 75 count


def test_sdxl_reads_long_prompts_in_windows(sdxl_engine):
    pipe = sdxl_engine._pipelines(None).txt2img
    encoder = prompt_encoder(pipe)
    arguments = conditioning_arguments(encoder, rows_for(request(prompt=LONG, n=1)))
    first = encoder.windows(LONG)[0]
    own = pipe.encode_prompt(first, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert arguments["prompt_embeds"].shape[1] == 2 * 77
    assert torch.allclose(arguments["prompt_embeds"][:, :77], own[0], atol=1e-5)
    assert torch.allclose(arguments["pooled_prompt_embeds"], own[2], atol=1e-5)  # the first window's
    assert not arguments["negative_prompt_embeds"].any()  # SDXL: an empty negative is zeros, all of it


async def test_a_cancelled_long_job_leaves_its_short_batch_mates_their_images(batching_engine):
    token = CancelToken()

    def cancel_the_long_one(update):
        if update.step == 1:
            token.cancel()

    results = await asyncio.gather(
        batching_engine.generate(request(prompt="a fox", seed=1, n=2), cancel_the_long_one),
        batching_engine.generate(request(prompt=LONG, seed=2, n=1), None, token),
        return_exceptions=True,
    )
    assert isinstance(results[0], list) and len(results[0]) == 2
    assert isinstance(results[1], EngineCancelled)
