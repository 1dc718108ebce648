"""A flagged job through the engine server: FAILED with code "flagged", back to ``EngineFlagged`` in the client,
and never resubmitted by the pool nor counted against the engine."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest
from aiohttp.test_utils import TestServer

from engine.base import EngineFlagged
from engine.pool import EnginePool
from engine.remote import RemoteEngine, _error_from
from engine.tiny import build_tiny_safety_checker
from tests.engine.support import small_request
from tests.engine.test_remote import TOKEN
from tests.engine.test_remote import start_server as start_engine_server

request = partial(small_request, steps=2, n=1)


async def start_server(model_dir, *, flag: bool) -> TestServer:
    return await start_engine_server(model_dir, safety_checker=build_tiny_safety_checker(flag=flag))


def test_the_flagged_code_maps_back():
    error = _error_from(
        {"error": {"code": "flagged", "message": "the safety filter flagged the result"}}, 200
    )
    assert isinstance(error, EngineFlagged) and str(error) == "the safety filter flagged the result"


async def test_flagged_on_the_server_is_not_retried_by_the_pool(tiny_model_dir):
    flagging = await start_server(tiny_model_dir, flag=True)
    clean = await start_server(tiny_model_dir, flag=False)
    try:
        # the server's own answer: FAILED, code "flagged", no image
        remote = RemoteEngine(str(flagging.make_url("")), TOKEN, name="flagging")
        job_id = await remote._submit({"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "n": 1})
        snapshot: dict = {}
        for _ in range(400):
            async with remote._http().get(f"{remote.url}/images/jobs/{job_id}") as response:
                snapshot = await response.json()
            if snapshot["state"] in ("SUCCEEDED", "FAILED", "CANCELED"):
                break
            await asyncio.sleep(0.05)
        assert snapshot["state"] == "FAILED" and snapshot["images"] == []
        assert snapshot["error"] == {"code": "flagged", "message": "the safety filter flagged the result"}
        await remote.close()

        # the pool: the flagging engine is first in line; the clean one would make the images if asked
        engines = [
            RemoteEngine(str(flagging.make_url("")), TOKEN, name="flagging", poll_interval=0.05),
            RemoteEngine(str(clean.make_url("")), TOKEN, name="clean", poll_interval=0.05),
        ]
        pool = EnginePool(engines, health_interval=0.2, wait_for_engine=5)
        await pool.start()
        try:
            with pytest.raises(EngineFlagged, match="safety filter"):
                await pool.generate(request())
            flagged, other = pool.status()
            assert (flagged.failures, flagged.total_failures, flagged.last_error) == (0, 0, None)
            assert flagged.in_rotation and flagged.healthy and flagged.load == 0
            assert (other.done, other.load) == (0, 0)  # not resubmitted elsewhere
            # the clean engine still works through the pool (the flagging one is busy)
            running = asyncio.Event()
            busy = asyncio.create_task(pool.generate(request(seed=1, steps=20), lambda _: running.set()))
            await running.wait()
            images = await pool.generate(request(seed=2))
            assert len(images) == 1 and pool.status()[1].done == 1
            with pytest.raises(EngineFlagged):
                await busy
        finally:
            await pool.close()
    finally:
        await flagging.close()
        await clean.close()
