"""Batch buckets of a compiled UNet: a call's image rows are padded to the next compiled size, and the padding
rows change nothing a user gets (``torch.compile`` itself is not run here: minutes on this CPU)."""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np

from engine.local import LocalDiffusersEngine
from tests.engine.support import pixels, small_request

request = partial(small_request, prompt="a lighthouse at dusk", n=3, steps=2)


def test_rows_are_padded_to_the_bucket_and_the_padding_is_dropped(tiny_model_dir, monkeypatch):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu", compile_buckets=[1, 4, 8])

    async def go() -> tuple[list, list, list[int]]:
        await engine.start()  # compile_unet is off: nothing is compiled
        try:
            plain = await engine.generate(request())
            loaded = engine._pipelines(None)
            real = loaded.txt2img
            rows: list[int] = []

            def counting(**kwargs):
                rows.append(len(kwargs["generator"]))
                return real(**kwargs)

            monkeypatch.setattr(loaded, "txt2img", counting)
            engine.compile_unet = True  # from here on calls are padded as for a compiled UNet
            padded = await engine.generate(request())
            return plain, padded, rows
        finally:
            await engine.close()

    plain, padded, rows = asyncio.run(go())
    assert rows == [4]  # 3 rows → the 4-row bucket
    assert len(padded) == 3
    for a, b in zip(plain, padded, strict=True):
        difference = np.abs(pixels(a) - pixels(b))
        assert difference.max() <= 3 and difference.mean() < 0.5  # batched-float tolerance, as batching
    assert engine._bucket(5) == 8 and engine._bucket(9) == 9  # beyond the largest compiled size: as is
