"""Time from ``python -m bot sandbox`` to the first grid, as a newcomer meets it.

Each run starts ``python -m bot sandbox --port 0 --data-dir <fresh folder>`` (default settings: the tiny
noise-only model, built on the spot, at 128 px and 10 steps), waits for the line with the page's address,
then sends ``/imagine`` through the page's own API (``POST /api/command``) and waits on the page's WebSocket
(``/api/events``) until the message has the grid's 9 buttons. Prints per run: command → address printed,
address → grid, command → grid.

    .venv/bin/python bench/sandbox_first_grid.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
ADDRESS = re.compile(r"open (http://127\.0\.0\.1:\d+)/")


def _buttons(message: dict) -> int:
    return sum(len(row.get("components", [])) for row in message.get("components", []))


async def one_run(data_dir: Path) -> tuple[float, float]:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "sandbox", "--port", "0", "--data-dir", str(data_dir),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        address = None
        while address is None:
            line = (await asyncio.wait_for(process.stdout.readline(), 600)).decode()
            if not line:
                raise RuntimeError("the sandbox exited before printing its address")
            if found := ADDRESS.search(line):
                address = found.group(1)
        ready = time.perf_counter()
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{address}/api/events") as ws:
            answer = await session.post(
                f"{address}/api/command", json={"command": "imagine", "options": {"prompt": "a red fox"}}
            )
            answer.raise_for_status()
            async for frame in ws:
                state = json.loads(frame.data)
                if any(_buttons(m) == 9 and m["attachments"] for m in state["messages"]):
                    break
        grid = time.perf_counter()
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    return ready - started, grid - ready


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    print("load average before: " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))
    print("each run: a fresh data dir (the tiny model is built on the spot), default sandbox settings")
    totals = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as folder:
            to_address, to_grid = await one_run(Path(folder) / "sandbox")
        totals.append(to_address + to_grid)
        print(
            f"run {run}: command → address printed {to_address:.1f} s, address → grid {to_grid:.1f} s, "
            f"command → first grid {to_address + to_grid:.1f} s"
        )
    print("load average after: " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))
    print(
        f"command → first grid: median {statistics.median(totals):.1f} s, min {min(totals):.1f} s, max {max(totals):.1f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
