"""The engine server keeps its jobs in a database: a real server process SIGKILLed with jobs queued and
running, restarted; time limits; retention; idempotency keys across a restart."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from engine.base import GenerationRequest
from engine.local import LocalDiffusersEngine
from engine.server import create_app
from engine.server.jobs import Limits

ROOT = Path(__file__).parents[2]
TOKEN = "persist-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED", "TIMED_OUT")


def body(**overrides):
    return {"prompt": "a red fox", "width": 64, "height": 64, "steps": 3, "seed": 42, "n": 1, **overrides}


class ServerProcess:
    """``python -m engine serve`` on a free port, its output collected in a file."""

    def __init__(self, model_dir: Path, data_dir: Path, log: Path) -> None:
        env = {
            **os.environ,
            "MODEL": str(model_dir),
            "DEVICE": "cpu",
            "ENGINE_TOKEN": TOKEN,
            "ENGINE_DATA_DIR": str(data_dir),
            "MODEL_STEPS": "3",
            "LOG_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("ENGINE_DATABASE_URL", None)
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    async def url(self) -> str:
        for _ in range(1200):  # up to 120 s on a loaded machine: torch and diffusers import slowly
            found = re.search(r"listening on (http://\S+)", self.log.read_text())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text())
            await asyncio.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.output.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.output.close()


async def get(session, url):
    async with session.get(url, headers=AUTH) as response:
        return response.status, await response.json()


async def until(predicate, timeout=300.0):
    """Poll an async predicate (the server is another process: there is nothing to await on)."""
    for _ in range(int(timeout / 0.05)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError


@pytest.mark.slow
@pytest.mark.timeout(600)  # two server starts (torch, diffusers, the model) on a loaded 2-core machine
async def test_sigkilled_server_runs_its_jobs_after_a_restart(tiny_model_dir, tiny_engine, tmp_path):
    data = tmp_path / "engine-data"
    first = ServerProcess(tiny_model_dir, data, tmp_path / "first.log")
    second = None
    keys = {"long": "key-long", "b": "key-b", "c": "key-c"}
    bodies = {"long": body(steps=20, seed=1), "b": body(seed=2), "c": body(seed=3)}
    try:
        url = await first.url()
        async with aiohttp.ClientSession() as session:
            await until(lambda: _ready(session, url))
            ids = {}
            for name, key in keys.items():
                async with session.post(
                    f"{url}/images/jobs", json=bodies[name], headers={**AUTH, "Idempotency-Key": key}
                ) as response:
                    assert response.status == 202
                    ids[name] = (await response.json())["id"]

            async def long_running():
                _, snapshot = await get(session, f"{url}/images/jobs/{ids['long']}")
                return snapshot["state"] == "PROCESSING" and snapshot["step"] >= 1

            await until(long_running)
            states = {
                name: (await get(session, f"{url}/images/jobs/{i}"))[1]["state"] for name, i in ids.items()
            }
            assert states == {"long": "PROCESSING", "b": "QUEUED", "c": "QUEUED"}
            first.kill()

            second = ServerProcess(tiny_model_dir, data, tmp_path / "second.log")
            url = await second.url()
            for name, key in keys.items():  # the client retries its submits: the same jobs, not new ones
                async with session.post(
                    f"{url}/images/jobs", json=bodies[name], headers={**AUTH, "Idempotency-Key": key}
                ) as response:
                    assert response.status == 200 and (await response.json())["id"] == ids[name]

            async def all_done():
                snapshots = [(await get(session, f"{url}/images/jobs/{i}"))[1] for i in ids.values()]
                return snapshots if all(s["state"] in TERMINAL for s in snapshots) else None

            finished = dict(zip(ids, await until(all_done), strict=True))
            assert {name: s["state"] for name, s in finished.items()} == dict.fromkeys(ids, "SUCCEEDED")
            for name, snapshot in finished.items():
                async with session.get(url + snapshot["images"][0], headers=AUTH) as response:
                    assert response.status == 200
                    image = Image.open(io.BytesIO(await response.read()))
                if name != "long":  # the same pixels as the engine makes for that request
                    expected = await tiny_engine.generate(GenerationRequest(**bodies[name]))
                    assert np.array_equal(np.asarray(image), np.asarray(expected[0]))
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()
    logs = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    for job_id in ids.values():  # every job ended once, in the second process
        assert logs[0].count(f"job {job_id}: SUCCEEDED") == 0
        assert logs[1].count(f"job {job_id}: SUCCEEDED") == 1
        assert logs[1].count(f"job {job_id}: queued") == 0  # no new job for a known key
    assert "recovered 3 unfinished jobs" in logs[1]


async def _ready(session, url):
    try:
        async with session.get(f"{url}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _client(model_dir, **options):
    engine = LocalDiffusersEngine(str(model_dir), device="cpu")
    client = TestClient(TestServer(create_app(engine, token=TOKEN, model_name="tiny", **options)))
    await client.start_server()
    for _ in range(200):
        if (await client.get("/healthz")).status == 200:
            break
        await asyncio.sleep(0.05)
    return client


async def wait_done(client, job_id, timeout=60):
    for _ in range(int(timeout / 0.05)):
        snapshot = await (await client.get(f"/images/jobs/{job_id}", headers=AUTH)).json()
        if snapshot["state"] in TERMINAL:
            return snapshot
        await asyncio.sleep(0.05)
    raise TimeoutError(job_id)


async def test_each_state_has_a_time_limit(tiny_model_dir):
    client = await _client(tiny_model_dir, limits=Limits(queued=0.5, processing=1.0, storing=5.0))
    try:
        running = (
            await (
                await client.post("/images/jobs", json=body(steps=150, width=128, height=128), headers=AUTH)
            ).json()
        )["id"]
        waiting = (await (await client.post("/images/jobs", json=body(), headers=AUTH)).json())["id"]
        queued = await wait_done(client, waiting)
        assert queued["state"] == "TIMED_OUT"
        assert queued["error"] == {"code": "timed_out", "message": "the job was queued for more than 0.5 s"}
        processing = await wait_done(client, running)
        assert processing["state"] == "TIMED_OUT" and processing["step"] < 150
        assert processing["error"]["message"] == "the job was processing for more than 1 s"
        metrics = await (await client.get("/metrics", headers=AUTH)).text()
        assert 'imaginebot_engine_jobs{state="TIMED_OUT"} 2.0' in metrics
    finally:
        await client.close()


async def test_results_survive_a_restart_and_then_expire(tiny_model_dir, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    client = await _client(tiny_model_dir, database_url=url)
    try:
        headers = {**AUTH, "Idempotency-Key": "k1"}
        job = (await (await client.post("/images/jobs", json=body(), headers=headers)).json())["id"]
        link = (await wait_done(client, job))["images"][0]
        assert (await client.get(link, headers=AUTH)).status == 200
    finally:
        await client.close()
    client = await _client(tiny_model_dir, database_url=url)  # a restart keeps jobs, images and keys
    try:
        assert (await client.get(link, headers=AUTH)).status == 200
        again = await client.post("/images/jobs", json=body(), headers=headers)
        assert again.status == 200 and (await again.json())["id"] == job
    finally:
        await client.close()
    client = await _client(tiny_model_dir, results_ttl=0.5)
    try:
        job = (await (await client.post("/images/jobs", json=body(), headers=headers)).json())["id"]
        link = (await wait_done(client, job))["images"][0]
        await asyncio.sleep(0.6)  # the retention period passing is what is tested
        assert (await client.get(link, headers=AUTH)).status == 404
        assert (await client.get(f"/images/jobs/{job}", headers=AUTH)).status == 404
        fresh = await client.post("/images/jobs", json=body(), headers=headers)  # the key may be used again
        assert fresh.status == 202 and (await fresh.json())["id"] != job
    finally:
        await client.close()
