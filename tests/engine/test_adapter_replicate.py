"""The predictions-API adapter against the fake Replicate server; the fake checked with the ``replicate`` client."""

from __future__ import annotations

import asyncio
from ipaddress import ip_network

import pytest
from PIL import Image

from engine.adapters.replicate import PredictionsEngine, load_input_map, progress_of
from engine.base import (
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    EngineUnsupported,
    GenerationRequest,
    Operation,
    ProgressUpdate,
)
from engine.geometry import outpaint_layout
from engine.safe_fetch import FetchPolicy
from tests.fakes.pixels import colour, fake_image
from tests.fakes.replicate import MODEL, VERSION, FakeReplicate

pytestmark = pytest.mark.timeout(60)
LOOPBACK = FetchPolicy(allowed_networks=(ip_network("127.0.0.0/8"),))


@pytest.fixture
async def fake():
    server = FakeReplicate()
    await server.start()
    yield server
    server.resume()
    await server.stop()


def adapter(fake, **options) -> PredictionsEngine:
    values = {"version": VERSION, "poll_interval": 0.01, "fetch_policy": LOOPBACK}
    return PredictionsEngine(fake.url, MODEL, "r8_test", **{**values, **options})


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a red fox", "width": 64, "height": 48, "steps": 6, "seed": 21, "n": 4}
    return GenerationRequest(**{**values, **overrides})


async def test_fake_speaks_replicate_to_its_client(fake):
    import replicate
    from replicate.exceptions import ReplicateError

    def client_session():
        client = replicate.Client(api_token="r8_test", base_url=fake.url)
        prediction = client.predictions.create(
            version=VERSION, input={"prompt": "a fox", "seed": 3, "num_outputs": 2, "width": 32, "height": 32}
        )
        prediction.wait()
        by_model = client.models.predictions.create(
            model=MODEL, input={"prompt": "x", "width": 16, "height": 16}
        )
        by_model.wait()
        ran = client.run(
            f"{MODEL}:{VERSION}", input={"prompt": "y", "width": 16, "height": 16}, use_file_output=False
        )
        to_cancel = client.predictions.create(version=VERSION, input={"prompt": "z"})
        to_cancel.cancel()
        to_cancel.reload()
        errors = []
        for bad in (
            lambda: replicate.Client(api_token="wrong", base_url=fake.url).predictions.create(
                version=VERSION, input={"prompt": "a"}
            ),
            lambda: client.predictions.create(version=VERSION, input={"prompt": "a", "width": "wide"}),
        ):
            try:
                bad()
            except ReplicateError as error:
                errors.append(error)
        return prediction, by_model, ran, to_cancel, errors

    fake.pause_at, fake.pause_prompt = 1, "z"  # only the prediction to cancel waits
    prediction, by_model, ran, to_cancel, errors = await asyncio.to_thread(client_session)
    assert prediction.status == "succeeded" and len(prediction.output) == 2
    assert "100%|" in prediction.logs
    assert by_model.status == "succeeded" and len(ran) == 1 and ran[0].startswith(fake.url)
    assert to_cancel.status == "canceled" and fake.cancels == [to_cancel.id]
    assert [e.status for e in errors] == [401, 422]


async def test_txt2img_maps_inputs_polls_progress_and_downloads_outputs(fake):
    engine = adapter(fake)
    await engine.start()
    updates: list[ProgressUpdate] = []
    fake.pause_at = 3  # held after two steps until the adapter has read the logs
    job = asyncio.create_task(engine.generate(request(negative_prompt="blur", guidance=4.5), updates.append))
    await fake.paused.wait()
    await fake.progress_seen.wait()
    fake.resume()
    images = await job
    assert [im.size for im in images] == [(64, 48)] * 4
    assert [im.getpixel((63, 47)) for im in images] == [colour("a red fox", 21 + i) for i in range(4)]
    assert fake.inputs[0] == {
        "prompt": "a red fox", "negative_prompt": "blur", "width": 64, "height": 48, "num_inference_steps": 6,
        "guidance_scale": 4.5, "seed": 21, "num_outputs": 4,
    }  # fmt: skip
    assert updates[0] == ProgressUpdate(step=2, total=6) and all(u.total == 6 for u in updates)
    await engine.close()


async def test_without_a_version_the_models_route_is_used(fake):
    engine = adapter(fake, version=None)
    images = await engine.generate(request(n=1))
    assert len(images) == 1 and next(iter(fake.predictions.values()))["version"] == VERSION
    await engine.close()


async def test_output_urls_go_through_the_ssrf_guard(fake):
    engine = adapter(fake, fetch_policy=FetchPolicy())  # the default: loopback refused
    with pytest.raises(EngineError, match="could not be fetched safely"):
        await engine.generate(request(n=1))
    await engine.close()
    fake.output_base = "http://169.254.169.254"  # an output pointing at the cloud metadata address
    engine = adapter(fake)
    with pytest.raises(EngineError, match="could not be fetched safely"):
        await engine.generate(request(n=1))
    await engine.close()


async def test_image_operations_and_outpainting(fake):
    engine = adapter(fake)
    init = fake_image("original", 2, 64, 48)
    varied = await engine.generate(request(operation=Operation.VARY_SUBTLE, init_image=init, n=1))
    assert fake.inputs[-1]["prompt_strength"] == 0.35 and fake.inputs[-1]["image"].startswith(
        "data:image/png"
    )
    assert varied[0].size == (64, 48)
    panned = await engine.generate(request(operation=Operation.PAN_DOWN, init_image=init, n=1))
    layout = outpaint_layout(64, 48, Operation.PAN_DOWN)
    assert "mask" in fake.inputs[-1] and panned[0].crop(layout.box).tobytes() == init.tobytes()
    await engine.close()


async def test_mapping_file_decides_fields_and_operations(fake, tmp_path):
    mapping = tmp_path / "inputs.toml"
    mapping.write_text('prompt = "text"\nseed = "seed"\nwidth = "width"\nheight = "height"\nn = ""\nimage = ""\n'
                       '[extra]\nnum_inference_steps = 2\n')  # fmt: skip
    inputs = load_input_map(mapping)
    assert inputs.operations == {Operation.TXT2IMG}
    engine = adapter(fake, inputs=inputs)
    with pytest.raises(EngineUnsupported, match="cannot do vary subtle"):
        await engine.generate(request(operation=Operation.VARY_SUBTLE, init_image=Image.new("RGB", (8, 8))))
    fake.inputs.clear()
    with pytest.raises(EngineError, match="prompt is required"):  # the fake checks the model's own names
        await engine.generate(request(n=2))
    await engine.close()
    mapping.write_text('prompt = "prompt"\nseed = "seed"\nn = ""\nwidth = "width"\nheight = "height"\n')
    engine = adapter(fake, inputs=load_input_map(mapping))
    images = await engine.generate(request(n=3))  # one prediction per tile, tile seeds
    assert sorted(i["seed"] for i in fake.inputs) == [21, 22, 23]
    assert [im.getpixel((63, 47)) for im in images] == [colour("a red fox", 21 + i) for i in range(3)]
    (tmp_path / "bad.toml").write_text('prompt = "p"\nsampler = "x"\n')
    with pytest.raises(EngineError, match="unknown fields sampler"):
        load_input_map(tmp_path / "bad.toml")
    await engine.close()


async def test_cancel_cancels_the_prediction(fake):
    engine = adapter(fake)
    fake.pause_at = 2
    token = CancelToken()
    job = asyncio.create_task(engine.generate(request(), cancel=token))
    await fake.paused.wait()
    token.cancel()
    with pytest.raises(EngineCancelled):
        await job
    assert fake.cancels == list(fake.predictions)
    assert next(iter(fake.predictions.values()))["status"] == "canceled"
    await engine.close()


async def test_failures_become_short_messages(fake):
    engine = adapter(fake)
    fake.fail_next = "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1 GiB"
    with pytest.raises(EngineOutOfMemory):
        await engine.generate(request())
    fake.fail_next = "Traceback (most recent call last):\n ...\nValueError: width must be a multiple of 64"
    with pytest.raises(EngineError, match="failed: ValueError: width must be a multiple of 64"):
        await engine.generate(request())
    wrong = PredictionsEngine(fake.url, MODEL, "nope", version=VERSION)
    with pytest.raises(EngineUnavailable, match="refused our token"):
        await wrong.start()
    assert not await wrong.health() and await engine.health()
    await wrong.close()
    missing = PredictionsEngine(fake.url, "someone/else", "r8_test")
    with pytest.raises(EngineUnavailable, match="does not exist"):
        await missing.generate(request())
    await missing.close()
    await engine.close()


def test_progress_is_read_from_logs():
    assert progress_of("Using seed: 1\n 45%|████▌     | 9/20 [00:01<00:01,  8.1it/s]") == (9, 20)
    assert progress_of("step 3 ... 30%\n... 60%") == (60, 100)
    assert progress_of("loading weights") is None


async def test_a_server_gone_mid_prediction_is_unavailable(fake):
    engine = adapter(fake, lost_after=0.2)
    fake.pause_at = 2
    job = asyncio.create_task(engine.generate(request()))
    await fake.paused.wait()
    await fake.stop()
    with pytest.raises(EngineUnavailable, match="cannot be reached"):
        await job
    await engine.close()
