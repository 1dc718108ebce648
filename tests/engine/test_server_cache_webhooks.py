"""The engine server's result cache and webhooks, in-process against the tiny engine."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.local import LocalDiffusersEngine
from engine.server import create_app
from engine.server.webhooks import ID_HEADER, SIGNATURE_HEADER, verify

TOKEN = "cache-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "whsec-test"


def body(**overrides):
    return {"prompt": "a red fox", "width": 64, "height": 64, "steps": 3, "seed": 42, "n": 2, **overrides}


class CountingEngine:
    """The tiny engine, counting the calls that reach it (the pipeline)."""

    def __init__(self, inner: LocalDiffusersEngine) -> None:
        self.inner, self.name, self.calls = inner, "counting", 0

    @property
    def slots(self) -> int:
        return self.inner.slots

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(self, request, on_progress=None, cancel=None):
        self.calls += 1
        return await self.inner.generate(request, on_progress, cancel)


async def started(app) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    for _ in range(200):
        if (await client.get("/healthz")).status == 200:
            break
        await asyncio.sleep(0.05)
    return client


async def submit_and_wait(client, payload):
    response = await client.post("/images/jobs?wait=60", json=payload, headers=AUTH)
    assert response.status == 200
    return await response.json()


async def test_an_identical_request_is_a_cache_hit_and_another_seed_a_miss(tiny_model_dir):
    engine = CountingEngine(LocalDiffusersEngine(str(tiny_model_dir), device="cpu"))
    client = await started(create_app(engine, token=TOKEN, model_name="tiny"))
    try:
        first = await submit_and_wait(client, body())
        assert first["state"] == "SUCCEEDED" and not first["cache_hit"] and engine.calls == 1
        second = await submit_and_wait(client, body())
        assert second["state"] == "SUCCEEDED" and second["cache_hit"] and engine.calls == 1
        assert second["id"] != first["id"] and second["images"] == first["images"]
        assert second["engine_seconds"] == 0
        for link in second["images"]:
            assert (await client.get(link, headers=AUTH)).status == 200
        other_seed = await submit_and_wait(client, body(seed=43))
        assert not other_seed["cache_hit"] and engine.calls == 2
        other_prompt = await submit_and_wait(client, body(prompt="a blue fox"))
        assert not other_prompt["cache_hit"] and engine.calls == 3
        refused = await submit_and_wait(client, body(cache=False))
        assert not refused["cache_hit"] and engine.calls == 4
        metrics = await (await client.get("/metrics", headers=AUTH)).text()
        assert "imaginebot_engine_cache_hits_total 1.0" in metrics
        assert "imaginebot_engine_cache_misses_total 3.0" in metrics
        assert "imaginebot_engine_cache_hit_ratio 0.25" in metrics
    finally:
        await client.close()


class Receiver:
    """A webhook receiver on a real port that fails the first ``failures`` deliveries with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.delivered = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.server = TestServer(app, host="127.0.0.1")

    async def hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if len(self.received) <= self.failures:
            return web.Response(status=500)
        self.delivered.set()
        return web.Response(status=204)


async def test_a_webhook_is_signed_and_retried_until_the_receiver_takes_it(tiny_model_dir):
    receiver = Receiver(failures=2)
    await receiver.server.start_server()
    app = create_app(
        LocalDiffusersEngine(str(tiny_model_dir), device="cpu"),
        token=TOKEN,
        model_name="tiny",
        webhook_secret=SECRET,
        webhook_allow_private=True,
        webhook_first_delay=0.05,
    )
    client = await started(app)
    try:
        hook = str(receiver.server.make_url("/hook"))
        response = await client.post("/images/jobs", json=body(callback_url=hook), headers=AUTH)
        job_id = (await response.json())["id"]
        await asyncio.wait_for(receiver.delivered.wait(), 60)
        assert len(receiver.received) == 3  # two failures, then delivered
        ids = {headers[ID_HEADER] for headers, _ in receiver.received}
        assert len(ids) == 1  # one event, retried under one id
        for headers, raw in receiver.received:
            assert verify(SECRET, headers[SIGNATURE_HEADER], raw)
            assert not verify("another secret", headers[SIGNATURE_HEADER], raw)
            assert not verify(SECRET, headers[SIGNATURE_HEADER], raw + b" ")
        payload = json.loads(receiver.received[-1][1])
        assert payload["event"] == "completed" and payload["job"]["id"] == job_id
        assert payload["job"]["state"] == "SUCCEEDED" and len(payload["job"]["images"]) == 2
        metrics = await (await client.get("/metrics", headers=AUTH)).text()
        assert 'imaginebot_engine_webhook_deliveries_total{outcome="failed"} 2.0' in metrics
        assert 'imaginebot_engine_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    finally:
        await client.close()
        await receiver.server.close()


async def test_a_webhook_to_a_private_address_is_refused_by_default(tiny_model_dir):
    app = create_app(LocalDiffusersEngine(str(tiny_model_dir), device="cpu"), token=TOKEN, model_name="tiny")
    client = await started(app)
    try:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://10.0.0.5/hook",
            "http://169.254.169.254/latest",
            "http://[::1]/hook",
            "http://[::ffff:192.168.0.1]/hook",
        ):
            response = await client.post("/images/jobs", json=body(callback_url=url), headers=AUTH)
            assert response.status == 422, url
            error = (await response.json())["error"]
            assert error["field"] == "callback_url" and "private or internal" in error["message"], url
    finally:
        await client.close()
