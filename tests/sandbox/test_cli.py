"""``python -m bot sandbox`` as a user starts it: no token, no configuration; it prints the page's address."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT
from tests.sandbox.http import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ADDRESS = re.compile(r"open (http://127\.0\.0\.1:\d+)/")


async def test_sandbox_command_starts_without_configuration_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODEL_RESOLUTION": "64",  # only to keep the test quick; the tiny model needs nothing else
        "MODEL_STEPS": "4",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "sandbox",
        "--port",
        "0",
        cwd=tmp_path,  # no .env here, no DISCORD_TOKEN anywhere
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        address = None
        while address is None:
            line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
            assert line, "the sandbox exited before printing its address:\n" + "".join(lines)
            lines.append(line)
            if found := ADDRESS.search(line):
                address = found.group(1)
        async with Client(base_url=address) as client:
            page = await client.get("/")
            state = (await client.get("/api/state")).json()
        assert page.status_code == 200 and "imagine" in page.text
        assert state["bot_ready"] and "imagine" in {c["name"] for c in state["commands"]}
        assert state["model"]["noise_only"] and "NOISE" in "".join(lines)
        assert (tmp_path / "data" / "sandbox" / "imaginebot.db").exists()  # its own data dir by default
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), 60)
        await asyncio.wait_for(process.wait(), 60)
    assert process.returncode == 0, "".join(lines) + rest.decode()
    assert "Traceback" not in rest.decode()
