"""The AUTOMATIC1111 adapter against the fake A1111 server; the fake itself checked with ``webuiapi``."""

from __future__ import annotations

import asyncio
import base64
import io

import aiohttp
import pytest
from PIL import Image

from engine.adapters.a1111 import A1111Engine
from engine.base import (
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    GenerationRequest,
    Operation,
    ProgressUpdate,
)
from engine.geometry import outpaint_layout
from tests.fakes.a1111 import MODELS, FakeA1111
from tests.fakes.pixels import colour, fake_image


def decode_b64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake():
    server = FakeA1111(auth=("ada", "s3cret"))
    await server.start()
    yield server
    server.resume()
    await server.stop()


@pytest.fixture
async def engine(fake):
    adapter = A1111Engine(fake.url, user="ada", password="s3cret", poll_interval=0.01)
    await adapter.start()
    yield adapter
    await adapter.close()


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a red fox", "width": 64, "height": 48, "steps": 6, "seed": 41, "n": 4}
    return GenerationRequest(**{**values, **overrides})


# -- the fake, checked with an independent client ---------------------------------------------------------


async def test_fake_speaks_a1111_to_webuiapi(fake):
    import webuiapi

    host, port = fake.url.removeprefix("http://").split(":")

    def client_session():
        api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=4)
        api.set_auth("ada", "s3cret")
        result = api.txt2img(prompt="a fox", seed=7, batch_size=2, width=32, height=32)
        init = Image.new("RGB", (32, 32), (10, 200, 30))
        edited = api.img2img(
            images=[init], prompt="a fox", seed=3, denoising_strength=0.5, width=32, height=32
        )
        masked = api.img2img(
            images=[init], mask_image=Image.new("L", (32, 32), 255), prompt="x", seed=1, width=32, height=32
        )
        return result, edited, masked, api.util_get_model_names(), api.get_progress()

    result, edited, masked, names, progress = await asyncio.to_thread(client_session)
    assert len(result.images) == 2 and result.images[0].size == (32, 32)
    assert result.info["all_seeds"] == [7, 8]
    assert result.images[0].getpixel((31, 31)) == colour("a fox", 7)
    assert fake.requests[0]["sampler_name"] == "Euler a"
    assert fake.requests[1]["init_images"] and edited.info["steps"] == 2  # int(4 x 0.5) steps, like A1111
    assert masked.images[0].getpixel((31, 31)) == colour("x", 1)  # all masked: fully generated
    assert sorted(names) == sorted(m["title"] for m in MODELS)
    assert progress["state"]["job_count"] == 0 and progress["current_image"] is None


async def test_fake_refuses_bad_auth_and_bad_fields(fake):
    async with aiohttp.ClientSession() as session:
        async with session.get(fake.url + "/sdapi/v1/samplers") as response:
            assert response.status == 401 and "Incorrect" in (await response.json())["detail"]
        auth = aiohttp.BasicAuth("ada", "s3cret")
        async with session.post(
            fake.url + "/sdapi/v1/txt2img", json={"steps": "many"}, auth=auth
        ) as response:
            assert response.status == 422
            assert (await response.json())["detail"][0]["loc"] == ["body", "steps"]
        async with session.post(
            fake.url + "/sdapi/v1/txt2img", json={"sampler_name": "Nope"}, auth=auth
        ) as response:
            assert response.status == 404 and (await response.json()) == {"detail": "Sampler not found"}


# -- the adapter ----------------------------------------------------------------------------------------


async def test_txt2img_reads_names_maps_fields_and_reports_progress(fake, engine):
    assert engine.sampler == "DPM++ 2M"  # read from /sdapi/v1/samplers: the first preferred one it has
    updates: list[ProgressUpdate] = []
    fake.pause_at = 3  # held after two steps (a preview is made every second step) until progress is read
    job = asyncio.create_task(engine.generate(request(negative_prompt="blur", guidance=5.0), updates.append))
    await fake.paused.wait()
    await fake.progress_seen.wait()
    fake.resume()
    images = await job
    assert [im.size for im in images] == [(64, 48)] * 4
    assert [im.getpixel((63, 47)) for im in images] == [colour("a red fox", 41 + i) for i in range(4)]
    sent = fake.requests[0]
    assert sent["batch_size"] == 4 and sent["seed"] == 41 and sent["cfg_scale"] == 5.0
    assert sent["negative_prompt"] == "blur" and sent["sampler_name"] == "DPM++ 2M"
    assert "override_settings" not in sent  # no --model: the server's current checkpoint
    assert updates and updates[0].step == 2 and all(u.total == 6 for u in updates)
    previews = [u.preview for u in updates if u.preview]
    assert previews and Image.open(io.BytesIO(previews[0])).format == "JPEG"


async def test_model_alias_names_a_server_checkpoint(fake, engine):
    await engine.generate(request(model="sd_xl_base_1.0", n=1))
    assert fake.requests[-1]["override_settings"] == {"sd_model_checkpoint": MODELS[1]["title"]}
    assert fake.checkpoints_used[-1] == MODELS[1]["title"]
    with pytest.raises(EngineError, match="not a checkpoint of .*v1-5-pruned-emaonly"):
        await engine.generate(request(model="sdxl-turbo"))


async def test_unknown_sampler_option_is_refused_at_start(fake):
    adapter = A1111Engine(fake.url, user="ada", password="s3cret", sampler="LMS Turbo")
    with pytest.raises(EngineError, match="no sampler 'LMS Turbo'"):
        await adapter.start()
    await adapter.close()


@pytest.mark.parametrize(
    ("operation", "strength", "steps"),
    [(Operation.VARY_SUBTLE, 0.35, 3), (Operation.VARY_STRONG, 0.75, 3), (Operation.UPSCALE_SUBTLE, 0.2, 5)],
)
async def test_image_operations_are_img2img(fake, engine, operation, strength, steps):
    init = Image.new("RGB", (64, 48), (0, 0, 255))
    images = await engine.generate(request(operation=operation, init_image=init, n=1, steps=3))
    sent = fake.requests[-1]
    # A1111 runs steps x strength: a low fixed strength asks for enough steps to make at least one
    assert sent["denoising_strength"] == strength and sent["steps"] == steps
    size = (128, 96) if operation.is_upscale else (64, 48)
    assert images[0].size == size and (sent["width"], sent["height"]) == size


async def test_upscales_can_use_the_servers_upscaler(fake):
    engine = A1111Engine(fake.url, user="ada", password="s3cret", upscaler="r-esrgan 4x+")
    await engine.start()
    assert engine.upscaler == "R-ESRGAN 4x+"  # the server's own spelling
    init = fake_image("tile", 4, 64, 48)
    images = await engine.generate(request(operation=Operation.UPSCALE_SUBTLE, init_image=init, n=1))
    assert fake.extras[0]["upscaler_1"] == "R-ESRGAN 4x+" and fake.extras[0]["upscaling_resize"] == 2
    sent = fake.requests[-1]
    assert (sent["width"], sent["height"]) == (128, 96) and images[0].size == (128, 96)
    nearest = init.resize((128, 96), Image.Resampling.NEAREST)
    assert decode_b64(sent["init_images"][0]).tobytes() == nearest.tobytes()  # the upscaler's image, not ours
    await engine.close()
    unknown = A1111Engine(fake.url, user="ada", password="s3cret", upscaler="SwinIR 9x")
    with pytest.raises(EngineError, match="no upscaler 'SwinIR 9x'; it has: None, Lanczos"):
        await unknown.start()
    await unknown.close()


async def test_outpainting_sends_a_mask_and_keeps_the_original(fake, engine):
    init = fake_image("original", 5, 64, 48)
    images = await engine.generate(request(operation=Operation.ZOOM_OUT_2X, init_image=init, n=2))
    sent = fake.requests[-1]
    layout = outpaint_layout(64, 48, Operation.ZOOM_OUT_2X)
    assert sent["mask"] and sent["inpainting_fill"] == 1 and sent["denoising_strength"] == 1.0
    assert images[0].size == (layout.width, layout.height)
    assert images[0].crop(layout.box).tobytes() == init.tobytes()  # pasted back exactly
    assert images[0].getpixel((layout.width - 1, 0)) != init.getpixel((63, 0))  # the border is new


async def test_one_job_at_a_time(fake, engine):
    fake.pause_at = 2
    first = asyncio.create_task(engine.generate(request(seed=1)))
    second = asyncio.create_task(engine.generate(request(seed=2)))
    await fake.paused.wait()
    assert len(fake.requests) == 1  # the second waits in our queue, not in the server's
    fake.resume()
    await asyncio.gather(first, second)
    assert [r["seed"] for r in fake.requests] == [1, 2]


async def test_cancel_interrupts_our_running_job(fake, engine):
    fake.pause_at = 3
    token = CancelToken()
    job = asyncio.create_task(engine.generate(request(), cancel=token))
    await fake.paused.wait()
    token.cancel()
    await fake.interrupted.wait()
    fake.resume()
    with pytest.raises(EngineCancelled):
        await job
    assert fake.interrupts == 1 and fake.finished[-1]["interrupted"]


async def test_cancel_never_interrupts_another_clients_job(fake, engine):
    fake.pause_at = 2
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth("ada", "s3cret")) as other:
        foreign = asyncio.create_task(
            other.post(fake.url + "/sdapi/v1/txt2img", json={"prompt": "theirs", "steps": 4, "seed": 9})
        )
        await fake.paused.wait()  # someone else's job runs
        token = CancelToken()
        ours = asyncio.create_task(engine.generate(request(), cancel=token))
        await fake.queued.wait()
        token.cancel()
        await fake.task_queried.wait()  # the adapter asked about its task: queued, so no interrupt
        assert fake.interrupts == 0
        fake.paused.clear()
        fake.pause_at = 2  # ours will stop there once it runs
        fake.resume()
        await fake.paused.wait()
        await fake.interrupted.wait()  # now ours runs: the adapter interrupts it
        fake.resume()
        response = await foreign
        assert response.status == 200
        with pytest.raises(EngineCancelled):
            await ours  # interrupted once it was the one running
        response.release()
    assert fake.finished[0] == {"task": fake.finished[0]["task"], "steps": 4, "interrupted": False}
    assert fake.interrupts == 1 and fake.finished[1]["interrupted"]


async def test_a_server_that_cannot_say_whose_job_runs_is_never_interrupted(fake, engine):
    fake.task_progress = False
    fake.pause_at = 2
    token = CancelToken()
    job = asyncio.create_task(engine.generate(request(seed=1), cancel=token))
    await fake.paused.wait()
    token.cancel()
    with pytest.raises(EngineCancelled):
        await job  # cancelled for the user at once; the server finishes it undisturbed
    second = asyncio.create_task(engine.generate(request(seed=2, n=1)))
    fake.resume()
    assert len(await second) == 1
    assert fake.interrupts == 0 and fake.finished[0]["steps"] == 6 and not fake.finished[0]["interrupted"]
    assert [r["seed"] for r in fake.requests] == [1, 2]  # the next job waited for the dropped one


async def test_a_job_over_its_time_limit_is_interrupted_and_ends(fake):
    engine = A1111Engine(fake.url, user="ada", password="s3cret", poll_interval=0.01, job_timeout=0.2)
    fake.pause_at = 2
    with pytest.raises(EngineError, match=r"took longer than 0.2 s"):
        await engine.generate(request())
    assert fake.interrupts == 1
    fake.resume()
    await engine.close()


async def test_backend_errors_become_short_messages(fake, engine):
    fake.fail_next = (
        500,
        {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory."},
    )
    with pytest.raises(EngineOutOfMemory, match="ran out of GPU memory"):
        await engine.generate(request())
    fake.fail_next = (500, {"error": "RuntimeError", "detail": "", "body": "", "errors": "boom"})
    with pytest.raises(EngineError, match=r"failed \(RuntimeError\)"):
        await engine.generate(request())
    fake.fail_next = (422, {"detail": [{"loc": ["body", "width"], "msg": "bad", "type": "value_error"}]})
    with pytest.raises(EngineError, match="rejected a field of the request width"):
        await engine.generate(request())
    fake.broken_images = True
    with pytest.raises(EngineError, match="sent an image that does not decode"):
        await engine.generate(request())


async def test_wrong_credentials_and_a_dead_server_are_unavailable(fake, engine):
    wrong = A1111Engine(fake.url, user="ada", password="nope")
    with pytest.raises(EngineUnavailable, match="refused our credentials"):
        await wrong.start()
    await wrong.close()
    assert await engine.health()
    fake.pause_at = 2
    job = asyncio.create_task(engine.generate(request()))
    await fake.paused.wait()
    await fake.stop()  # the server dies mid-job
    with pytest.raises(EngineUnavailable, match="went away mid-job"):
        await job
    assert not await engine.health()
