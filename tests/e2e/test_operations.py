"""Operations of a real ``python -m bot`` process: ``/healthz`` and ``/metrics`` on HTTP_PORT, JSON logs
with job ids and without secrets, and a quiet start-up with one banner."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest

from bot.ops_server import Metrics, OpsServer
from tests.e2e.harness import BotProcess, bot_environment, is_final_grid, wait_for_bot, wait_for_message
from tests.postgres import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def until_ready(http: httpx.AsyncClient, timeout: float = 60) -> httpx.Response:
    """Poll /healthz as an orchestrator would: discord.py's READY comes a little after the gateway session."""
    async with asyncio.timeout(timeout):
        while (health := await http.get("/healthz")).status_code != 200:
            assert health.status_code == 503 and health.json()["role"] == "active", health.text
            await asyncio.sleep(0.2)
    return health


async def scrape_until(http: httpx.AsyncClient, line: str, attempts: int = 150) -> str:
    """/metrics once it shows ``line`` (the job ends SUCCEEDED just after its message is posted)."""
    for _ in range(attempts):
        metrics = (await http.get("/metrics")).text
        if line in metrics:
            return metrics
        await asyncio.sleep(0.2)
    raise AssertionError(f"{line} not in /metrics:\n{metrics}")


async def test_health_metrics_and_json_logs_of_a_bot_process(emu, tiny_model_dir, tmp_path):
    port = free_port()
    env = bot_environment(emu, tiny_model_dir, tmp_path / "data", http_port=port, log_format="json")
    process = BotProcess(env, tmp_path / "bot.log")
    await process.start()
    try:
        await wait_for_bot(emu, timeout=120)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = await until_ready(http)
            assert health.json() == {
                "ready": True,
                "role": "active",
                "discord": True,
                "database": True,
                "engine": True,
            }

            ix = await emu.invoke_slash("imagine", {"prompt": "a lighthouse --seed 4"})
            await ix.wait_for_response(3)
            await wait_for_message(
                emu,
                lambda m: m.id == ix.response_message_id and is_final_grid(m),
                timeout=120,
                description="the grid",
            )
            metrics = await scrape_until(http, 'imaginebot_jobs{state="SUCCEEDED"')
    finally:
        exit_code = await process.stop(signal.SIGTERM, timeout=60)  # a loaded CI box exits slowly
    assert exit_code == 0, process.output()[-3000:]

    assert 'imaginebot_jobs{state="SUCCEEDED",tier="free"} 1.0' in metrics, metrics
    assert "imaginebot_queue_length 0.0" in metrics
    assert 'imaginebot_discord_requests_total{status="200"}' in metrics
    assert "imaginebot_quota_charged_seconds_total" in metrics and "imaginebot_active 1.0" in metrics

    output = process.output()
    records = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    job_id = next(r["job_id"] for r in records if "job_id" in r)
    assert any(r.get("job_id") == job_id and "succeeded" in r["message"] for r in records)
    assert emu.bot_token not in output
    banners = [r["message"] for r in records if r["message"].startswith("imaginebot ready to connect")]
    assert len(banners) == 1 and "engines: localdiffusers" in banners[0] and "database: sqlite" in banners[0]
    assert "torchvision" not in output and "Loading pipeline components" not in output
    assert "voice will NOT be supported" not in output  # discord.py's voice advice: the bot has no voice


async def test_a_standby_or_an_unhealthy_engine_is_not_ready():
    class DownEngine:
        name = "remote-1"
        slots = 1

        async def health(self) -> bool:
            return False

    server = OpsServer(DownEngine(), Metrics(), "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            health = await http.get("/healthz")
            metrics = await http.get("/metrics")
    finally:
        await server.close()
    assert health.status_code == 503
    assert health.json() == {
        "ready": False,
        "role": "standby",
        "discord": False,
        "database": False,
        "engine": False,
    }
    assert "imaginebot_active 0.0" in metrics.text
