"""The engine server in-process (aiohttp test server on a real port): submit, events, result, cancel, auth."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from engine.local import LocalDiffusersEngine
from engine.server import create_app

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def body(**overrides):
    return {"prompt": "a red fox", "width": 64, "height": 64, "steps": 3, "seed": 42, "n": 2, **overrides}


@pytest.fixture
async def client(tiny_model_dir):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu")
    app = create_app(engine, token=TOKEN, model_name="tiny", max_request_bytes=2**20)
    async with TestClient(TestServer(app)) as client:
        for _ in range(200):
            if (await client.get("/healthz")).status == 200:
                break
            await asyncio.sleep(0.05)
        yield client


async def wait_done(client, job_id, timeout=20):
    for _ in range(int(timeout / 0.05)):
        snapshot = await (await client.get(f"/images/jobs/{job_id}", headers=AUTH)).json()
        if snapshot["state"] in ("SUCCEEDED", "FAILED", "CANCELED"):
            return snapshot
        await asyncio.sleep(0.05)
    raise TimeoutError(job_id)


async def test_submit_events_and_result(client, tiny_engine):
    response = await client.post("/images/jobs", json=body(), headers=AUTH)
    assert response.status == 202
    job_id = (await response.json())["id"]
    events = []
    async with client.ws_connect(f"/images/jobs/{job_id}/events", headers=AUTH) as socket:
        async for message in socket:
            events.append(message.json())
    states = [e["state"] for e in events]
    assert states[-1] == "SUCCEEDED"
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress][-3:] == [1, 2, 3] and progress[-1]["progress"] == 85
    preview = base64.b64decode(progress[0]["preview"])
    assert Image.open(io.BytesIO(preview)).format == "JPEG"
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)

    snapshot = await wait_done(client, job_id)
    assert snapshot["progress"] == 100 and snapshot["error"] is None and len(snapshot["images"]) == 2
    from engine.base import GenerationRequest

    expected = await tiny_engine.generate(
        GenerationRequest(prompt="a red fox", width=64, height=64, steps=3, seed=42, n=2)
    )
    for link, image in zip(snapshot["images"], expected, strict=True):
        got = Image.open(io.BytesIO(await (await client.get(link, headers=AUTH)).read()))
        assert got.size == (64, 64) and np.array_equal(np.asarray(got), np.asarray(image))


async def test_image_operation_with_a_base64_init_image(client):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 30, 30)).save(buffer, format="PNG")
    init = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = await client.post(
        "/images/jobs", json=body(operation="zoom_out_2x", init_image=init, n=1), headers=AUTH
    )
    snapshot = await wait_done(client, (await response.json())["id"])
    assert snapshot["state"] == "SUCCEEDED"
    image = Image.open(io.BytesIO(await (await client.get(snapshot["images"][0], headers=AUTH)).read()))
    assert image.size == (80, 48)


async def test_cancel_a_running_job(client):
    job_id = (
        await (
            await client.post("/images/jobs", json=body(steps=150, width=128, height=128), headers=AUTH)
        ).json()
    )["id"]
    for _ in range(400):
        snapshot = await (await client.get(f"/images/jobs/{job_id}", headers=AUTH)).json()
        if snapshot["step"] >= 1:
            break
        await asyncio.sleep(0.02)
    response = await client.delete(f"/images/jobs/{job_id}", headers=AUTH)
    assert response.status == 200
    snapshot = await wait_done(client, job_id)
    assert snapshot["state"] == "CANCELED" and snapshot["step"] < 150
    assert snapshot["error"]["code"] == "canceled"


async def test_idempotent_resubmit_returns_the_same_job(client):
    headers = {**AUTH, "Idempotency-Key": "abc-123"}
    first = await client.post("/images/jobs", json=body(), headers=headers)
    second = await client.post("/images/jobs", json=body(), headers=headers)
    assert first.status == 202 and second.status == 200
    job_id = (await first.json())["id"]
    assert (await second.json())["id"] == job_id
    await wait_done(client, job_id)
    metrics = await (await client.get("/metrics", headers=AUTH)).text()
    assert 'imaginebot_engine_jobs{state="SUCCEEDED"} 1' in metrics
    assert "imaginebot_engine_images_total 2" in metrics
    assert "imaginebot_engine_queue_length 0" in metrics


async def test_auth_errors_and_limits(client):
    assert (await client.post("/images/jobs", json=body())).status == 401
    wrong = await client.get("/images/jobs/x", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and (await wrong.json())["error"]["code"] == "unauthorized"
    assert (await client.get("/metrics")).status == 401
    health = await client.get("/healthz")  # open: load balancers probe it
    assert health.status == 200 and (await health.json())["model"] == "tiny"

    missing = await client.get("/images/jobs/nope", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    assert (await client.delete("/images/jobs/nope", headers=AUTH)).status == 404
    assert (await client.get("/images/nope.png", headers=AUTH)).status == 404

    for bad in (
        body(prompt=""),
        body(width=63),
        body(steps=0),
        body(n=99),
        body(operation="explode"),
        body(operation="vary_subtle"),
        body(init_image="not base64!"),
        body(seed=-1),
        body(init_image=base64.b64encode(b"not an image").decode()),
        body(chaos=101),
        body(chaos="lots"),
        body(prompt_parts="a::2"),
        body(prompt_parts=[["a", 1.0], ["b", -2.0]]),  # the total must be positive
        body(prompt_parts=[["", 1.0]]),
        body(prompt_parts=[["a", 1.0, 3]]),
        body(prompt_parts=[["a", float("inf")]]),
        body(prompt_parts=[["a", True]]),
        body(prompt_parts=[["a", 1.0]] * 17),
    ):
        response = await client.post("/images/jobs", json=bad, headers=AUTH)
        assert response.status == 400, bad
        error = (await response.json())["error"]
        assert error["code"] in ("invalid_request", "invalid_image") and error["message"]
    huge = await client.post(
        "/images/jobs", data=b"x" * (2**20 + 10), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert huge.status == 413 and (await huge.json())["error"]["code"] == "too_large"
    assert (await client.post("/images/jobs", data=b"[1,", headers=AUTH)).status == 400


async def test_a_model_that_fails_to_load_fails_jobs_with_a_reason():
    app = create_app(LocalDiffusersEngine("/no/such/model.safetensors", device="cpu"), model_name="missing")
    async with TestClient(TestServer(app)) as client:
        for _ in range(100):
            health = await client.get("/healthz")
            if (await health.json())["status"] != "loading":
                break
            await asyncio.sleep(0.05)
        assert health.status == 503 and "not found" in (await health.json())["error"]
        response = await client.post("/images/jobs", json=body())
        assert response.status == 503 and (await response.json())["error"]["code"] == "engine_unavailable"


def test_serve_refuses_a_public_host_without_a_token(tmp_path):
    env = {"PATH": "", "HF_HUB_OFFLINE": "1", "MODEL": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(__import__("pathlib").Path(__file__).parents[2]),
        timeout=60,
    )
    assert result.returncode == 2 and "ENGINE_TOKEN" in result.stderr
