"""EnginePool with backends that do different operations, and failover between adapters of different kinds."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from engine.adapters.a1111 import A1111Engine
from engine.adapters.comfyui import ComfyUIEngine
from engine.base import ALL_OPERATIONS, EngineUnsupported, GenerationRequest, Operation
from engine.pool import EnginePool
from tests.fakes.a1111 import FakeA1111
from tests.fakes.comfyui import CHECKPOINTS, FakeComfyUI
from tests.fakes.pixels import colour

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def servers():
    a1111, comfy = FakeA1111(), FakeComfyUI()
    await asyncio.gather(a1111.start(), comfy.start())
    yield a1111, comfy
    a1111.resume()
    comfy.resume()
    await asyncio.gather(a1111.stop(), comfy.stop())


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a fox", "width": 64, "height": 64, "steps": 4, "seed": 7, "n": 4}
    return GenerationRequest(**{**values, **overrides})


async def test_requests_go_only_where_they_can_run(servers):
    a1111, comfy = servers
    comfy_engine = ComfyUIEngine(comfy.url, checkpoint=CHECKPOINTS[0], poll_interval=0.02)
    alone = EnginePool([comfy_engine])
    await alone.start()
    assert Operation.MAKE_SQUARE not in alone.operations
    with pytest.raises(EngineUnsupported, match="cannot do make square"):
        await alone.generate(request(operation=Operation.MAKE_SQUARE, init_image=Image.new("RGB", (64, 48))))
    assert comfy.prompts == []
    await alone.close()

    pool = EnginePool([ComfyUIEngine(comfy.url, checkpoint=CHECKPOINTS[0]), A1111Engine(a1111.url)])
    await pool.start()
    assert pool.operations == ALL_OPERATIONS
    squared = await pool.generate(
        request(operation=Operation.MAKE_SQUARE, init_image=Image.new("RGB", (64, 48)))
    )
    assert squared[0].size == (64, 64) and len(a1111.requests) == 1 and comfy.prompts == []
    await pool.close()


async def test_a_dead_backend_hands_the_job_to_another_kind_with_the_same_seed(servers):
    a1111, comfy = servers
    pool = EnginePool(
        [A1111Engine(a1111.url, poll_interval=0.01), ComfyUIEngine(comfy.url, checkpoint=CHECKPOINTS[0])],
        health_interval=60,
    )
    await pool.start()
    a1111.pause_at = 2
    job = asyncio.create_task(pool.generate(request()))
    await a1111.paused.wait()
    await a1111.stop()
    images = await job
    assert comfy.prompts[0]["prompt"]["3"]["inputs"]["seed"] == 7
    assert [im.getpixel((63, 63)) for im in images] == [colour("a fox", 7 + i) for i in range(4)]
    first, second = pool.status()
    assert (first.kind, first.in_rotation, first.total_failures) == ("a1111", False, 1)
    assert (second.kind, second.done) == ("comfyui", 1)
    await a1111.start(int(a1111.url.rsplit(":", 1)[1]))  # back on the same port
    await pool.check_health()
    assert pool.status()[0].in_rotation and pool.status()[0].healthy
    await pool.close()
