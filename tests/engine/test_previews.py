import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.previews import (
    PreviewCadence,
    PreviewCopy,
    X0Capture,
    encode_preview,
    latent_preview,
    latent_rgb_factors,
    latents_to_rgb,
    rgb_on_device,
)


def test_shape_and_first_tile_only():
    latents = torch.zeros(4, 4, 8, 16)
    latents[1:] = 5.0  # other tiles must not matter
    rgb = latents_to_rgb(latents, latent_rgb_factors("sd1"))
    assert rgb.shape == (8, 16, 3) and rgb.dtype == np.uint8
    assert (rgb == 128).all()  # zero latent → 0 → middle grey


def test_value_mapping_with_a_known_latent():
    latents = torch.zeros(1, 4, 2, 2)
    latents[0, 3] = 1.0  # channel 3 → (-0.184, -0.271, -0.473)
    rgb = latents_to_rgb(latents, latent_rgb_factors("sd1"))
    expected = np.round((1 + np.array([-0.184, -0.271, -0.473])) * 127.5)
    assert (rgb[0, 0] == expected).all()  # [104, 93, 67]
    latents[0, 0] = 100.0  # far beyond [-1, 1] → clamped
    assert (latents_to_rgb(latents, latent_rgb_factors("sd1")) == 255).all()


def test_sdxl_matrix_differs():
    assert latent_rgb_factors("sdxl").shape == (4, 3)
    assert not torch.equal(latent_rgb_factors("sdxl"), latent_rgb_factors("sd1"))
    with pytest.raises(ValueError):
        latent_rgb_factors("flux")


def test_jpeg_preview_is_upscaled_x8():
    jpeg = latent_preview(torch.randn(2, 4, 8, 6), latent_rgb_factors("sd1"))
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (48, 64) and image.mode == "RGB"
    assert Image.open(io.BytesIO(encode_preview(np.zeros((4, 4, 3), np.uint8), upscale=1))).size == (4, 4)


def due_steps(cadence: PreviewCadence, steps: int) -> list[int]:
    clock = cadence.start()
    return [s for s in range(1, steps + 1) if clock.due(s)]


def test_cadence():
    assert due_steps(PreviewCadence(0), 7) == [1, 2, 3, 4, 5, 6, 7]
    assert due_steps(PreviewCadence(0, every=3), 7) == [3, 6]
    assert due_steps(PreviewCadence(0, every=0), 7) == []
    assert due_steps(PreviewCadence(-1), 7) == []
    ticks = iter(range(100))
    assert due_steps(PreviewCadence(2.5, clock=lambda: float(next(ticks))), 9) == [1, 4, 7]  # t = 0, 3, 6


def test_device_pixels_and_host_copy():
    latents = torch.zeros(3, 4, 2, 5)
    latents[1, 3] = 1.0
    factors = latent_rgb_factors("sd1")
    pixels = rgb_on_device(latents, factors)
    assert pixels.shape == (3, 2, 5, 3) and pixels.dtype == torch.uint8
    assert np.array_equal(pixels[1].numpy(), latents_to_rgb(latents[1:2], factors))
    copy = PreviewCopy(pixels, upscale=8)
    assert copy.ready()  # on the CPU the pixels are already on the host
    jpegs = copy.jpegs()
    assert len(jpegs) == 3 and Image.open(io.BytesIO(jpegs[0])).size == (40, 16)


def test_x0_capture_on_euler():
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(4)
    capture = X0Capture(scheduler)
    sample = torch.randn(1, 4, 8, 8)
    t = scheduler.timesteps[0]
    scheduler.step(torch.zeros_like(sample), t, sample, return_dict=False)
    assert capture.x0 is not None and capture.x0.shape == sample.shape
    capture.reset()
    assert capture.x0 is None
    capture.detach()
    assert "step" not in vars(scheduler)
