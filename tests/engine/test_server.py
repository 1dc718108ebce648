"""The engine server in-process (aiohttp test server on a real port): submit, events, result, cancel, auth,
browser protection, what a finished job keeps, sync mode."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys

import aiohttp
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
        if snapshot["state"] in ("SUCCEEDED", "FAILED", "CANCELED", "TIMED_OUT"):
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
    assert 'imaginebot_engine_jobs{state="SUCCEEDED"} 1.0' in metrics
    assert "imaginebot_engine_images_total 2.0" in metrics
    assert "imaginebot_engine_queue_length 0.0" in metrics
    assert "imaginebot_engine_generation_seconds_count 1.0" in metrics
    assert "imaginebot_engine_queue_wait_seconds_count 1.0" in metrics
    assert "imaginebot_engine_images_per_second" in metrics


async def test_auth_errors_and_limits(client):
    assert (await client.post("/images/jobs", json=body())).status == 401
    wrong = await client.get("/images/jobs/x", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and (await wrong.json())["error"]["code"] == "unauthorized"
    assert (await client.get("/metrics")).status == 401
    health = await client.get("/healthz")  # open: load balancers probe it, and learn only ready or not
    assert health.status == 200 and await health.json() == {"status": "ok"}
    detailed = await (await client.get("/healthz", headers=AUTH)).json()
    assert detailed["model"] == "tiny" and detailed["slots"] == 1
    basic = aiohttp.BasicAuth("anyone", TOKEN)  # A1111 clients send the token as a Basic password
    assert (await client.get("/images/jobs/nope", auth=basic)).status == 404
    assert (await client.get("/images/jobs/nope", auth=aiohttp.BasicAuth("anyone", "nope"))).status == 401

    missing = await client.get("/images/jobs/nope", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    assert (await client.delete("/images/jobs/nope", headers=AUTH)).status == 404
    assert (await client.get("/images/nope.png", headers=AUTH)).status == 404

    for bad, field in (
        (body(prompt=""), "prompt"),
        (body(prompt="   "), "prompt"),
        (body(width=63), "width"),
        (body(width="64"), "width"),
        (body(steps=0), "steps"),
        (body(n=99), "n"),
        (body(operation="explode"), "operation"),
        (body(operation="vary_subtle"), "init_image"),
        (body(init_image="not base64!"), "init_image"),
        (body(seed=-1), "seed"),
        (body(init_image=base64.b64encode(b"not an image").decode()), "init_image"),
        (body(chaos=101), "chaos"),
        (body(chaos="lots"), "chaos"),
        (body(guidance=True), "guidance"),
        (body(prompt_parts="a::2"), "prompt_parts"),
        (body(prompt_parts=[["a", 1.0], ["b", -2.0]]), "prompt_parts"),  # the total must be positive
        (body(prompt_parts=[["", 1.0]]), "prompt_parts"),
        (body(prompt_parts=[["a", 1.0, 3]]), "prompt_parts.0"),
        (body(prompt_parts=[["a", True]]), "prompt_parts"),
        (body(prompt_parts=[["a", 1.0]] * 17), "prompt_parts"),
        (body(callback_url="ftp://example.com/hook"), "callback_url"),
    ):
        response = await client.post("/images/jobs", json=bad, headers=AUTH)
        assert response.status == 422, bad
        error = (await response.json())["error"]
        assert error["code"] in ("invalid_request", "invalid_image"), bad
        assert error["field"].startswith(field) and error["message"].startswith(field), (bad, error)
    infinite = await client.post(
        "/images/jobs",
        data=b'{"prompt": "a", "prompt_parts": [["a", Infinity]]}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert infinite.status == 422 and (await infinite.json())["error"]["field"].startswith("prompt_parts")
    huge = await client.post(
        "/images/jobs", data=b"x" * (2**20 + 10), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert huge.status == 413 and (await huge.json())["error"]["code"] == "too_large"
    broken = await client.post(
        "/images/jobs", data=b"[1,", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert broken.status == 400


async def test_a_model_that_fails_to_load_is_named_by_its_alias_only(tmp_path):
    missing = tmp_path / "private" / "models" / "missing.safetensors"
    app = create_app(LocalDiffusersEngine(str(missing), device="cpu"), model_name=str(missing))
    async with TestClient(TestServer(app)) as client:
        for _ in range(100):
            health = await client.get("/healthz")
            if (await health.json())["status"] != "loading":
                break
            await asyncio.sleep(0.05)
        shown = await health.text()  # no token configured: details, but never the path or the error text
        assert health.status == 503 and (await health.json())["status"] == "failed"
        assert "private" not in shown and "not found" not in shown and "error" not in shown
        response = await client.post("/images/jobs", json=body())
        assert response.status == 503
        error = (await response.json())["error"]
        assert error["code"] == "engine_unavailable"
        assert error["message"] == "the model missing.safetensors could not be loaded"
        assert "private" not in await (await client.get("/sdapi/v1/sd-models")).text()


async def test_a_loopback_server_without_a_token_refuses_what_a_web_page_could_send(tiny_model_dir):
    """A page in a browser on this host may POST text/plain or form data cross-origin without CORS."""
    app = create_app(LocalDiffusersEngine(str(tiny_model_dir), device="cpu"), model_name="tiny")
    async with TestClient(TestServer(app)) as client:
        plain = await client.post(
            "/images/jobs", data=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"}
        )
        assert plain.status == 415 and (await plain.json())["error"]["code"] == "unsupported_media_type"
        for route in ("/sdapi/v1/txt2img", "/v1/images/generations"):
            assert (
                await client.post(route, data=b"{}", headers={"Content-Type": "text/plain"})
            ).status == 415
        foreign = await client.post("/images/jobs", json=body(), headers={"Origin": "https://evil.example"})
        assert foreign.status == 403 and (await foreign.json())["error"]["code"] == "forbidden_origin"
        form = await client.post(
            "/v1/images/edits", data={"prompt": "x"}, headers={"Origin": "http://localhost:1"}
        )
        assert form.status == 403
        assert (await client.get("/images/jobs/x/events", headers={"Origin": "null"})).status == 403
        own = str(client.make_url("")).rstrip("/")
        same = await client.post("/images/jobs", json=body(prompt=""), headers={"Origin": own})
        assert same.status == 422  # same origin passes the check (and the prompt is what is wrong)


async def test_a_finished_job_keeps_only_what_a_client_can_fetch(client):
    """No decoded input image in memory or in the database once the job is over; results in the store."""
    from engine.server.context import SERVER

    server = client.server.app[SERVER]
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    response = await client.post(
        "/images/jobs", json=body(operation="img2img", init_image=init, n=1), headers=AUTH
    )
    job_id = (await response.json())["id"]
    row = await server.manager.store.get(job_id)
    assert row is not None and row.init_image is not None  # kept while the job may still (re)run
    snapshot = await wait_done(client, job_id)
    assert snapshot["state"] == "SUCCEEDED"
    assert job_id not in server.manager.active  # nothing of it in memory
    row = await server.manager.store.get(job_id)
    assert row.init_image is None and row.expires_at is not None
    got = await client.get(snapshot["images"][0], headers=AUTH)
    assert got.status == 200 and Image.open(io.BytesIO(await got.read())).size == (64, 64)


async def test_sync_mode_within_and_beyond_the_wait(client):
    quick = await client.post("/images/jobs?wait=60", json=body(n=1), headers=AUTH)
    assert quick.status == 200
    snapshot = await quick.json()
    assert snapshot["state"] == "SUCCEEDED" and len(snapshot["images"]) == 1
    slow = await client.post(
        "/images/jobs?wait=0.01", json=body(steps=150, width=128, height=128, n=1), headers=AUTH
    )
    assert slow.status == 202
    pending = await slow.json()
    assert pending["state"] in ("QUEUED", "PROCESSING") and pending["images"] == []
    await client.delete(f"/images/jobs/{pending['id']}", headers=AUTH)
    for wait in ("121", "-1", "soon"):
        refused = await client.post(f"/images/jobs?wait={wait}", json=body(), headers=AUTH)
        assert refused.status == 422 and (await refused.json())["error"]["field"] == "wait"


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
