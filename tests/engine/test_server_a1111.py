"""The A1111 ``/sdapi/v1`` routes, driven by the real ``webuiapi`` client (its own HTTP code, in a thread)."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
import webuiapi
from aiohttp.test_utils import TestServer
from PIL import Image

from engine.base import GenerationRequest
from engine.local import LocalDiffusersEngine
from engine.seeds import tile_seeds
from engine.server import create_app

TOKEN = "a1111-token"


@pytest.fixture
async def api(tiny_model_dir):
    server = TestServer(
        create_app(LocalDiffusersEngine(str(tiny_model_dir), device="cpu"), token=TOKEN, model_name="tiny"),
        host="127.0.0.1",
    )
    await server.start_server()
    # webuiapi is synchronous (requests): every call runs in a thread, the server on this loop.
    # A1111's --api-auth: the token is the Basic password, any user name.
    client = await asyncio.to_thread(
        webuiapi.WebUIApi, host="127.0.0.1", port=server.port, steps=3, username="whoever", password=TOKEN
    )
    for _ in range(200):
        health = await asyncio.to_thread(client.session.get, f"http://127.0.0.1:{server.port}/healthz")
        if health.status_code == 200:
            break
        await asyncio.sleep(0.05)
    client.test_port = server.port
    yield client
    await server.close()


async def test_txt2img_and_img2img(api, tiny_engine):
    result = await asyncio.to_thread(
        api.txt2img,
        prompt="a red fox",
        negative_prompt="blur",
        width=64,
        height=64,
        steps=3,
        seed=7,
        batch_size=2,
    )
    assert len(result.images) == 2 and all(image.size == (64, 64) for image in result.images)
    assert result.info["all_seeds"] == tile_seeds(7, 2) and result.info["seed"] == tile_seeds(7, 2)[0]
    assert result.parameters["prompt"] == "a red fox"
    expected = await tiny_engine.generate(
        GenerationRequest(
            prompt="a red fox", negative_prompt="blur", width=64, height=64, steps=3, seed=7, n=2
        )
    )
    for got, want in zip(result.images, expected, strict=True):
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))

    init = Image.new("RGB", (64, 48), (200, 40, 40))
    edited = await asyncio.to_thread(
        api.img2img,
        images=[init],
        prompt="a red fox",
        width=64,
        height=48,
        steps=3,
        seed=3,
        denoising_strength=0.5,
    )
    assert len(edited.images) == 1 and edited.images[0].size == (64, 48)
    assert edited.info["denoising_strength"] == 0.5

    models = await asyncio.to_thread(api.util_get_model_names)
    assert models == ["tiny"]
    assert (await asyncio.to_thread(api.get_options))["sd_model_checkpoint"] == "tiny"
    assert [s["name"] for s in await asyncio.to_thread(api.get_samplers)]
    assert "imaginebot" in [u["name"] for u in await asyncio.to_thread(api.get_upscalers)]
    upscaled = await asyncio.to_thread(api.extra_single_image, image=expected[0], upscaling_resize=2)
    assert upscaled.image.size == (128, 128)


async def test_progress_shows_a_preview_mid_job_and_interrupt_stops_it(api):
    job = asyncio.ensure_future(
        asyncio.to_thread(api.txt2img, prompt="a slow fox", width=128, height=128, steps=150, seed=1)
    )
    progress = None
    for _ in range(1200):
        progress = await asyncio.to_thread(api.get_progress)
        if progress["current_image"]:
            break
        await asyncio.sleep(0.02)
    assert progress is not None and progress["current_image"], progress
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150
    image = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert image.size[0] > 0 and image.format == "JPEG"
    await asyncio.to_thread(api.interrupt)
    result = await asyncio.wait_for(job, 60)
    assert result.images == [] and result.info["interrupted"] is True
    idle = await asyncio.to_thread(api.get_progress)
    assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job_count"] == 0


async def test_auth_and_unsupported_fields(api):
    anonymous = await asyncio.to_thread(webuiapi.WebUIApi, host="127.0.0.1", port=api.test_port)
    with pytest.raises(RuntimeError, match="401"):
        await asyncio.to_thread(anonymous.txt2img, prompt="x", width=64, height=64, steps=1)
    with pytest.raises(RuntimeError, match="422"):
        await asyncio.to_thread(api.txt2img, prompt="x", width=64, height=64, steps=1, enable_hr=True)
    refused = await asyncio.to_thread(api.set_options, {"sd_model_checkpoint": "no-such-model"})
    assert refused["error"]["field"] == "sd_model_checkpoint"  # set_options returns the JSON as it came
    assert await asyncio.to_thread(api.set_options, {"sd_model_checkpoint": "tiny"}) is True
    assert (await asyncio.to_thread(api.get_options))["sd_model_checkpoint"] == "tiny"
