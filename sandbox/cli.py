"""``python -m bot sandbox``: run the sandbox until Ctrl-C / SIGTERM and print where its page is."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from pydantic import ValidationError

from bot.settings import SettingsError
from engine.base import EngineError
from sandbox.settings import SandboxSettings

log = logging.getLogger("sandbox")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot sandbox",
        description="The bot, a local Discord emulator and a web channel in one process: no Discord needed.",
    )
    parser.add_argument("--host", help="address of the web page (SANDBOX_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port of the web page (SANDBOX_PORT, default 8090)")
    parser.add_argument(
        "--data-dir", help="database, images and tiny model (SANDBOX_DATA_DIR, default ./data/sandbox)"
    )
    return parser.parse_args(argv)


async def run(config: SandboxSettings) -> int:
    from sandbox.runner import Sandbox  # imports discord.py, torch: after the arguments are known to be valid

    if config.sandbox_host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"imaginebot sandbox: listening on {config.sandbox_host}: anyone who reaches the page can act "
            "as its users (it has no login)",
            file=sys.stderr,
        )
    started = time.monotonic()
    sandbox = Sandbox(config)
    print(f"imaginebot sandbox: {sandbox.model.note}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sandbox.start()
    except OSError as error:
        print(
            f"imaginebot sandbox: cannot listen on {config.sandbox_host}:{config.sandbox_port}: {error}",
            file=sys.stderr,
        )
        await sandbox.stop()
        return 2
    except EngineError as error:
        print(f"imaginebot sandbox: could not load the model: {error}", file=sys.stderr)
        await sandbox.stop()
        return 3
    print(
        f"imaginebot sandbox: ready in {time.monotonic() - started:.1f}s — open {sandbox.url}/ "
        f"(data in {config.sandbox_data_dir}; Ctrl-C stops)",
        flush=True,
    )
    await stop.wait()
    print("imaginebot sandbox: stopping", flush=True)
    await sandbox.stop()
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in (
            ("sandbox_host", args.host),
            ("sandbox_port", args.port),
            ("sandbox_data_dir", args.data_dir),
        )
        if value is not None
    }
    try:
        config = SandboxSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        for problem in error.errors():
            name = ".".join(str(p) for p in problem["loc"]).upper()
            print(f"imaginebot sandbox: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("discord").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        return asyncio.run(run(config))
    except SettingsError as error:
        print(f"imaginebot sandbox: {error}", file=sys.stderr)
        return 2
