"""RemoteEngine and EnginePool against in-process engine servers on real ports."""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from engine.base import (
    CancelToken,
    Engine,
    EngineCancelled,
    EngineUnavailable,
    Operation,
    engine_seconds_of,
)
from engine.local import LocalDiffusersEngine
from engine.pool import EnginePool
from engine.remote import RemoteEngine
from engine.server import create_app
from tests.engine.support import small_request

TOKEN = "t0ken"


request = partial(small_request, n=2)


async def start_server(model_dir, **engine_options) -> TestServer:
    """An engine server on a real port, answering health checks; ``engine_options`` go to the engine."""
    engine = LocalDiffusersEngine(str(model_dir), device="cpu", **engine_options)
    server = TestServer(create_app(engine, token=TOKEN, model_name="tiny"))
    await server.start_server()
    remote = RemoteEngine(str(server.make_url("")), TOKEN)
    for _ in range(200):
        if await remote.health():
            break
        await asyncio.sleep(0.05)
    await remote.close()
    return server


def same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


async def test_remote_engine_generates_the_same_images(tiny_model_dir, tiny_engine):
    server = await start_server(tiny_model_dir)
    remote = RemoteEngine(str(server.make_url("")), TOKEN, name="a")
    try:
        await remote.start()
        assert isinstance(remote, Engine) and remote.slots == 1 and "t0ken" not in repr(remote)
        updates = []
        images = await remote.generate(request(), updates.append)
        assert same(images, await tiny_engine.generate(request()))
        assert (
            0 < engine_seconds_of(images) < 60
        )  # the server's device time for the job, for the bot's charge
        assert [u.step for u in updates] == [1, 2, 3] and updates[0].preview is not None
        styled = request(chaos=60, guidance=5.0, prompt_parts=(("a red fox", 2.0), ("snow", -0.5)))
        assert same(await remote.generate(styled), await tiny_engine.generate(styled))
        init = images[0]
        pan = await remote.generate(request(operation=Operation.PAN_RIGHT, init_image=init, n=1))
        assert pan[0].size == (96, 64)
        assert np.array_equal(np.asarray(pan[0].crop((0, 0, 64, 64))), np.asarray(init))

        token = CancelToken()

        def cancel_at_two(update):
            if update.step >= 2:
                token.cancel()

        with pytest.raises(EngineCancelled):
            await remote.generate(request(steps=150, width=128, height=128), cancel_at_two, token)
    finally:
        await remote.close()
        await server.close()


async def test_remote_engine_with_a_wrong_token_or_no_server(tiny_model_dir):
    server = await start_server(tiny_model_dir)
    try:
        wrong = RemoteEngine(str(server.make_url("")), "wrong")
        with pytest.raises(EngineUnavailable, match="token"):
            await wrong.generate(request())
        await wrong.close()
    finally:
        await server.close()
    gone = RemoteEngine("http://127.0.0.1:9", TOKEN)
    with pytest.raises(EngineUnavailable):
        await gone.start()
    assert not await gone.health()
    await gone.close()


async def test_pool_spreads_jobs_and_fails_over(tiny_model_dir, tiny_engine):
    servers = [await start_server(tiny_model_dir) for _ in range(2)]
    engines = [
        RemoteEngine(str(s.make_url("")), TOKEN, name=f"e{i}", lost_after=0.5, poll_interval=0.05)
        for i, s in enumerate(servers)
    ]
    pool = EnginePool(engines, health_interval=0.2, wait_for_engine=5)
    try:
        await pool.start()
        assert pool.slots == 2
        first = await asyncio.gather(pool.generate(request(seed=1)), pool.generate(request(seed=2)))
        assert [s.done for s in pool.status()] == [1, 1]  # one job on each server
        assert same(first[0], await tiny_engine.generate(request(seed=1)))

        # a server dies mid-job: the job finishes on the other one with the same images
        started = asyncio.Event()
        victim_index: list[int] = []

        def on_progress(update):
            started.set()

        job = asyncio.create_task(pool.generate(request(seed=7, steps=40, n=1), on_progress))
        await started.wait()
        victim_index.append(next(i for i, s in enumerate(pool.status()) if s.load == 1))
        await servers[victim_index[0]].close()
        images = await asyncio.wait_for(job, 60)
        assert same(images, await tiny_engine.generate(request(seed=7, steps=40, n=1)))
        status = pool.status()
        victim, survivor = status[victim_index[0]], status[1 - victim_index[0]]
        assert not victim.in_rotation and not victim.healthy and victim.total_failures == 1
        assert survivor.done == 2 and survivor.seconds_per_image is not None

        # later jobs go to the survivor only
        await pool.generate(request(seed=3, n=1))
        assert pool.status()[1 - victim_index[0]].done == 3
    finally:
        await pool.close()
        for server in servers:
            await server.close()
