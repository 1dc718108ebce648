"""The OpenAI Images routes, driven by the real ``openai`` SDK with ``base_url`` at the test server."""

from __future__ import annotations

import asyncio
import base64
import io

import aiohttp
import numpy as np
import openai
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image

from engine.local import LocalDiffusersEngine
from engine.server import create_app

TOKEN = "openai-token"


@pytest.fixture
async def server(tiny_model_dir):
    server = TestServer(
        create_app(
            LocalDiffusersEngine(str(tiny_model_dir), device="cpu"),
            token=TOKEN,
            model_name="tiny",
            default_steps=3,
        ),
        host="127.0.0.1",
    )
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(server.make_url("/healthz")) as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.05)
    yield server
    await server.close()


def sdk(server, key=TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=str(server.make_url("/v1")), max_retries=0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_generate_as_base64_and_as_a_url(server):
    client = sdk(server)
    result = await client.images.generate(prompt="a red fox", n=2, size="64x48", response_format="b64_json")
    assert len(result.data) == 2 and result.created > 0
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.size == (64, 48)
    linked = await client.images.generate(prompt="a red fox", size="64x64", response_format="url")
    url = linked.data[0].url
    assert url.startswith(str(server.make_url("/images/")))
    async with aiohttp.ClientSession() as session:  # no API key: the link is signed
        async with session.get(url) as response:
            assert response.status == 200
            assert Image.open(io.BytesIO(await response.read())).size == (64, 64)
        async with session.get(url.replace("signature=", "signature=0")) as response:
            assert response.status == 401
    await client.close()


async def test_edit_with_and_without_a_mask(server):
    client = sdk(server)
    original = Image.new("RGB", (64, 64), (20, 180, 40))
    result = await client.images.edit(
        image=("fox.png", png(original), "image/png"), prompt="a fox", size="64x64"
    )
    edited = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert edited.size == (64, 64)

    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # the left half is transparent: only it is edited
    masked = await client.images.edit(
        image=("fox.png", png(original), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a fox",
    )
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(masked.data[0].b64_json))).convert("RGB"))
    assert image.shape == (64, 64, 3)
    assert (image[:, 32:] == (20, 180, 40)).all()  # the opaque half is the original
    assert not (image[:, :32] == (20, 180, 40)).all()  # the transparent half was drawn
    await client.close()


async def test_errors_have_openai_shape(server):
    with pytest.raises(openai.AuthenticationError) as denied:
        await sdk(server, key="wrong").images.generate(prompt="x", size="64x64")
    assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.images.generate(prompt="x", size="huge")
    assert bad.value.param == "size" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.images.generate(prompt="x", n=11, size="64x64")
    assert too_many.value.param == "n"
    with pytest.raises(openai.BadRequestError) as no_image:
        await client.images.edit(image=("x.png", b"not an image", "image/png"), prompt="x")
    assert no_image.value.param == "image"
    await client.close()
