"""Optional TAESD previews: a tiny ``AutoencoderTiny`` decodes the previews instead of the latent matrix."""

import asyncio
import io

import pytest
import torch
from PIL import Image

from engine.base import GenerationRequest, ProgressUpdate
from engine.local import LocalDiffusersEngine
from engine.previews import latent_preview, latent_rgb_factors, taesd_preview
from engine.settings import load_engine_settings
from engine.tiny import build_tiny_taesd


def request() -> GenerationRequest:
    return GenerationRequest(prompt="a red fox", width=64, height=48, steps=2, seed=3, n=1)


def previews_of(engine: LocalDiffusersEngine) -> list[bytes]:
    async def go() -> list[bytes]:
        await engine.start()
        try:
            updates: list[ProgressUpdate] = []
            await engine.generate(request(), updates.append)
            return [u.preview for u in updates if u.preview is not None]
        finally:
            await engine.close()

    return asyncio.run(go())


def test_taesd_preview_is_a_full_size_jpeg():
    latents = torch.randn(2, 4, 6, 8)
    jpeg = taesd_preview(latents, build_tiny_taesd())
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (64, 48) and image.mode == "RGB"
    assert jpeg != latent_preview(latents, latent_rgb_factors("sd1"))


@pytest.mark.parametrize("saved", [False, True], ids=["instance", "folder"])
def test_engine_previews_come_from_the_tiny_autoencoder(tiny_model_dir, tmp_path, saved):
    taesd = build_tiny_taesd()
    source = taesd
    if saved:
        taesd.save_pretrained(tmp_path / "taesd")
        source = str(tmp_path / "taesd")
    engine = LocalDiffusersEngine(
        str(tiny_model_dir), device="cpu", preview_decoder=source, preview_interval=0
    )
    previews = previews_of(engine)
    assert engine._preview_decoder is not None
    decoder = engine._preview_decoder
    assert type(decoder).__name__ == "AutoencoderTiny"
    if not saved:
        assert decoder is taesd
    else:  # loaded from the folder: the same weights
        for a, b in zip(decoder.state_dict().values(), taesd.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    assert len(previews) == 2
    for jpeg in previews:
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG" and image.size == (64, 48)


def test_engine_uses_the_decoder_for_its_previews(tiny_model_dir):
    taesd = build_tiny_taesd()
    decoded: list[tuple[int, ...]] = []
    taesd.decoder.register_forward_hook(lambda module, args, output: decoded.append(tuple(output.shape)))
    engine = LocalDiffusersEngine(
        str(tiny_model_dir), device="cpu", preview_decoder=taesd, preview_interval=0
    )
    previews = previews_of(engine)
    assert len(previews) == 2 and decoded == [(1, 3, 48, 64)] * 2


def test_default_is_the_latent_matrix(tiny_model_dir):
    settings = load_engine_settings(model=str(tiny_model_dir), device="cpu")
    assert settings.engine_preview_decoder == "latent-rgb"
    engine = LocalDiffusersEngine.from_settings(settings)
    previews = previews_of(engine)
    assert engine._preview_decoder is None
    assert Image.open(io.BytesIO(previews[-1])).size == (64, 48)  # 6x8 latent, upscaled x8
