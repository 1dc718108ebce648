"""The ComfyUI adapter against the fake ComfyUI server; the fake checked with ComfyUI's own websocket example."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from engine.adapters.comfy_workflows import BUNDLED, load_workflow
from engine.adapters.comfyui import ComfyUIEngine
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
from tests.fakes.comfyui import CHECKPOINTS, FakeComfyUI
from tests.fakes.pixels import colour, fake_image

pytestmark = pytest.mark.timeout(60)
WORKFLOWS = Path(__file__).parents[1] / "fakes" / "workflows"


@pytest.fixture
async def fake():
    server = FakeComfyUI()
    await server.start()
    yield server
    server.resume()
    await server.stop()


@pytest.fixture
async def engine(fake):
    adapter = ComfyUIEngine(fake.url, checkpoint=CHECKPOINTS[0], workflows=WORKFLOWS, poll_interval=0.02)
    await adapter.start()
    yield adapter
    await adapter.close()


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a red fox", "width": 64, "height": 48, "steps": 5, "seed": 11, "n": 4}
    return GenerationRequest(**{**values, **overrides})


def example_flow(server_address: str, prompt: dict) -> tuple[dict[str, list[bytes]], list[bytes]]:
    """ComfyUI's script_examples/websockets_api_example.py, as published (websocket-client + urllib)."""
    import websocket

    client_id = str(uuid.uuid4())
    previews: list[bytes] = []

    def queue_prompt(prompt, prompt_id):
        p = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        data = json.dumps(p).encode("utf-8")
        req = urllib.request.Request(f"http://{server_address}/prompt", data=data)
        urllib.request.urlopen(req).read()

    def get_image(filename, subfolder, folder_type):
        data = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        url_values = urllib.parse.urlencode(data)
        with urllib.request.urlopen(f"http://{server_address}/view?{url_values}") as response:
            return response.read()

    def get_history(prompt_id):
        with urllib.request.urlopen(f"http://{server_address}/history/{prompt_id}") as response:
            return json.loads(response.read())

    def get_images(ws, prompt):
        prompt_id = str(uuid.uuid4())
        queue_prompt(prompt, prompt_id)
        output_images = {}
        while True:
            out = ws.recv()
            if isinstance(out, str):
                message = json.loads(out)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["node"] is None and data["prompt_id"] == prompt_id:
                        break  # Execution is done
            else:
                previews.append(out)  # previews are binary data
                continue
        history = get_history(prompt_id)[prompt_id]
        for node_id in history["outputs"]:
            node_output = history["outputs"][node_id]
            images_output = []
            if "images" in node_output:
                for image in node_output["images"]:
                    images_output.append(get_image(image["filename"], image["subfolder"], image["type"]))
            output_images[node_id] = images_output
        return output_images

    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_address}/ws?clientId={client_id}")
    try:
        return get_images(ws, prompt), previews
    finally:
        ws.close()


async def test_fake_runs_comfyuis_own_websocket_example(fake):
    graph = load_workflow(BUNDLED / "txt2img.json").fill(
        {
            "prompt": "a fox",
            "negative": "",
            "seed": 5,
            "width": 32,
            "height": 32,
            "steps": 3,
            "guidance": 7.0,
            "batch": 2,
            "model": CHECKPOINTS[0],
        }  # fmt: skip
    )
    outputs, previews = await asyncio.to_thread(example_flow, fake.url.removeprefix("http://"), graph)
    images = [Image.open(io.BytesIO(data)) for data in outputs["9"]]
    assert [im.size for im in images] == [(32, 32)] * 2
    assert images[1].getpixel((31, 31)) == colour("a fox", 6)
    assert len(previews) == 3 and struct.unpack(">II", previews[0][:8]) == (1, 1)
    assert Image.open(io.BytesIO(previews[0][8:])).format == "JPEG"


async def test_fake_refuses_a_bad_graph_like_comfyui(fake):
    graph = load_workflow(BUNDLED / "txt2img.json").graph  # placeholders unfilled: wrong types
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/prompt", json={"prompt": graph, "client_id": "x"}) as response:
            assert response.status == 400
            body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert "4" in body["node_errors"] and "3" in body["node_errors"]


async def test_txt2img_through_the_socket_with_previews(fake, engine):
    updates: list[ProgressUpdate] = []
    images = await engine.generate(request(negative_prompt="blur"), updates.append)
    assert [im.size for im in images] == [(64, 48)] * 4
    assert [im.getpixel((63, 47)) for im in images] == [colour("a red fox", 11 + i) for i in range(4)]
    sent = fake.prompts[0]
    assert sent["client_id"] == engine.client_id
    graph = sent["prompt"]
    assert graph["3"]["inputs"]["seed"] == 11 and graph["3"]["inputs"]["steps"] == 5
    assert graph["4"]["inputs"]["ckpt_name"] == CHECKPOINTS[0] and graph["7"]["inputs"]["text"] == "blur"
    assert [u.step for u in updates if u.preview is None] == [1, 2, 3, 4, 5]
    assert [u.step for u in updates if u.preview] == [1, 2, 3, 4, 5]


async def test_image_operations_upload_their_input(fake, engine):
    init = Image.new("RGB", (64, 48), (0, 0, 255))
    images = await engine.generate(request(operation=Operation.VARY_STRONG, init_image=init))
    graph = fake.prompts[-1]["prompt"]
    assert graph["3"]["inputs"]["denoise"] == 0.75 and graph["10"]["inputs"]["image"] in fake.inputs
    assert len(images) == 4 and images[0].size == (64, 48)
    upscaled = await engine.generate(request(operation=Operation.UPSCALE_CREATIVE, init_image=init, n=1))
    assert upscaled[0].size == (128, 96)


async def test_outpainting_needs_an_inpaint_workflow(fake, engine):
    bundled_only = ComfyUIEngine(fake.url, checkpoint=CHECKPOINTS[0])
    assert (
        Operation.ZOOM_OUT_2X not in bundled_only.operations and Operation.IMG2IMG in bundled_only.operations
    )
    init = fake_image("original", 3, 64, 48)
    with pytest.raises(EngineUnsupported, match="cannot do zoom out 2x"):
        await bundled_only.generate(request(operation=Operation.ZOOM_OUT_2X, init_image=init))
    assert fake.prompts == []
    images = await engine.generate(request(operation=Operation.PAN_LEFT, init_image=init, n=1))
    layout = outpaint_layout(64, 48, Operation.PAN_LEFT)
    assert images[0].size == (layout.width, layout.height)
    assert images[0].crop(layout.box).tobytes() == init.tobytes()


async def test_model_alias_names_a_checkpoint(fake, engine):
    await engine.generate(request(model="sd_xl_base_1.0", n=1))
    assert fake.prompts[-1]["prompt"]["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    with pytest.raises(EngineError, match="not a checkpoint of"):
        await engine.generate(request(model="flux"))


async def test_cancel_interrupts_only_our_running_prompt(fake, engine):
    fake.pause_at = 2
    token = CancelToken()
    job = asyncio.create_task(engine.generate(request(), cancel=token))
    await fake.paused.wait()
    token.cancel()
    await fake.until(lambda: fake.interrupts)  # the adapter saw its prompt running: a targeted interrupt
    fake.resume()
    with pytest.raises(EngineCancelled):
        await job
    assert fake.interrupts == [fake.prompts[0]["prompt_id"]] and fake.finished[0]["interrupted"]


async def test_cancel_of_a_queued_prompt_removes_it(fake, engine):
    fake.pause_at = 2
    graph = load_workflow(BUNDLED / "txt2img.json").fill(
        {
            "prompt": "theirs",
            "negative": "",
            "seed": 1,
            "width": 32,
            "height": 32,
            "steps": 3,
            "guidance": 7.0,
            "batch": 1,
            "model": CHECKPOINTS[0],
        }  # fmt: skip
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/prompt", json={"prompt": graph, "client_id": "someone"}) as r:
            theirs = (await r.json())["prompt_id"]
    await fake.paused.wait()
    token = CancelToken()
    job = asyncio.create_task(engine.generate(request(), cancel=token))
    await fake.until(lambda: len(fake.prompts) == 2)
    token.cancel()
    with pytest.raises(EngineCancelled):
        await job
    assert fake.deleted == [fake.prompts[1]["prompt_id"]] and fake.interrupts == []
    fake.resume()
    await fake.until(lambda: fake.finished)
    assert fake.finished == [{"prompt_id": theirs, "steps": 3, "interrupted": False}]


async def test_backend_errors_become_short_messages(fake, engine):
    fake.fail_next = ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(EngineOutOfMemory):
        await engine.generate(request())
    fake.fail_next = ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(EngineError, match="failed in KSampler: mat1 and mat2"):
        await engine.generate(request())
    wrong = ComfyUIEngine(fake.url, checkpoint="missing.safetensors")
    with pytest.raises(EngineError, match="MODEL 'missing.safetensors' is not a checkpoint of .*v1-5-pruned"):
        await wrong.start()
    with pytest.raises(EngineError, match=r"refused the workflow: node 4 \(CheckpointLoaderSimple\)"):
        await wrong.generate(request())
    await wrong.close()


async def test_a_lost_socket_falls_back_to_polling_history(fake, engine):
    fake.pause_at = 2
    job = asyncio.create_task(engine.generate(request()))
    await fake.paused.wait()
    await fake.drop_sockets()
    fake.resume()
    images = await job
    assert [im.getpixel((63, 47)) for im in images] == [colour("a red fox", 11 + i) for i in range(4)]


async def test_a_dead_server_is_unavailable(fake, engine):
    assert await engine.health()
    fake.pause_at = 2
    job = asyncio.create_task(engine.generate(request()))
    await fake.paused.wait()
    await fake.stop()
    with pytest.raises(EngineUnavailable):
        await job
    assert not await engine.health()


def test_bad_workflow_files_are_named(tmp_path):
    (tmp_path / "txt2img.json").write_text('{"3": {"inputs": {}}}')
    with pytest.raises(EngineError, match="txt2img.json is not in API format"):
        ComfyUIEngine("http://127.0.0.1:1", checkpoint="x", workflows=tmp_path)
    (tmp_path / "txt2img.json").write_text('{"3": {"class_type": "KSampler", "inputs": {"seed": "{{sed}}"}}}')
    with pytest.raises(EngineError, match="unknown placeholders: sed"):
        ComfyUIEngine("http://127.0.0.1:1", checkpoint="x", workflows=tmp_path)
    (tmp_path / "txt2img.json").write_text(
        '{"3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}"}}}'
    )
    with pytest.raises(EngineError, match=r"needs the placeholders: \{\{prompt\}\}"):
        ComfyUIEngine("http://127.0.0.1:1", checkpoint="x", workflows=tmp_path)


async def test_fake_serves_comfy_api_simplified(fake, tmp_path):
    from comfy_api_simplified import ComfyApiWrapper

    path = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)

    def client_session():
        api = ComfyApiWrapper(fake.url)
        uploaded = api.upload_image(path)
        graph = load_workflow(BUNDLED / "img2img.json").fill(
            {
                "prompt": "a fox",
                "negative": "",
                "seed": 9,
                "steps": 4,
                "guidance": 7.0,
                "batch": 1,
                "model": CHECKPOINTS[1],
                "image": f"{uploaded['subfolder']}/{uploaded['name']}",
                "strength": 0.5,
            }  # fmt: skip
        )
        prompt_id, _previews = asyncio.run(api.queue_prompt_and_wait(graph))
        history = api.get_history(prompt_id)
        saved = history[prompt_id]["outputs"]["9"]["images"][0]
        image = api.get_image(saved["filename"], saved["subfolder"], saved["type"])
        info = api.get_object_info("CheckpointLoaderSimple")
        return uploaded, history[prompt_id], image, api.get_queue(), api.get_system_stats(), info

    uploaded, entry, image, queue, stats, info = await asyncio.to_thread(client_session)
    assert uploaded == {"name": "in.png", "subfolder": "default_upload_folder", "type": "input"}
    assert entry["status"]["status_str"] == "success"
    result = Image.open(io.BytesIO(image)).convert("RGB")
    assert result.size == (32, 32) and result.getpixel((0, 0)) != (1, 2, 3)  # half re-imagined
    assert queue == {"queue_running": [], "queue_pending": []} and "system" in stats
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == CHECKPOINTS
