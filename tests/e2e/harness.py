"""Running the real bot (in-process or as ``python -m bot``) against the Discord emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.app import ImagineBot
from bot.discord_endpoints import apply_discord_endpoints
from bot.engines import build_local_engine
from bot.settings import Settings, load_settings
from engine.local import LocalDiffusersEngine
from sandbox.discord_emulator import DiscordEmulator

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_RESOLUTION = 64
E2E_STEPS = 4


def bot_environment(emu: DiscordEmulator, model_dir: Path, data_dir: Path, **extra: Any) -> dict[str, str]:
    """The settings a test bot runs with, as environment variables (the user-facing contract)."""
    env = {
        "DISCORD_TOKEN": emu.bot_token,
        "DISCORD_API_BASE": emu.api_base,
        "DISCORD_GATEWAY_URL": emu.gateway_url,
        "DISCORD_GUILD_ID": str(emu.guild_id),
        "DATA_DIR": str(data_dir),
        "MODEL": str(model_dir),
        "MODEL_RESOLUTION": str(E2E_RESOLUTION),
        "MODEL_STEPS": str(E2E_STEPS),
        "DEVICE": "cpu",
        "PROGRESS_EDIT_INTERVAL": "0.2",
        "ADMIN_USER_IDS": "",
    }
    env.update({key.upper(): str(value) for key, value in extra.items()})
    return env


def bot_settings(emu: DiscordEmulator, model_dir: Path, data_dir: Path, **extra: Any) -> Settings:
    """``database_url=...`` in ``extra`` picks the database (default: SQLite in ``data_dir``)."""
    values: dict[str, object] = {
        k.lower(): v for k, v in bot_environment(emu, model_dir, data_dir, **extra).items()
    }
    values.setdefault("database_url", None)
    return load_settings(_env_file=None, **values)


class InProcessBot:
    """The bot on the test's event loop; ``stop()`` and ``start()`` again simulate a restart."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bot: ImagineBot | None = None
        self.engine: LocalDiffusersEngine | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, emu: DiscordEmulator) -> ImagineBot:
        apply_discord_endpoints(self.settings.discord_api_base, self.settings.discord_gateway_url)
        self.engine = build_local_engine(self.settings)  # what ENGINE=local builds
        await self.engine.start()
        self.bot = ImagineBot(
            self.settings,
            self.engine,
            guild_ready_timeout=0.05,
            now=lambda: datetime.fromtimestamp(
                emu.clock.now(), UTC
            ),  # the emulator's clock, which tests advance
            watchdog_interval=0.2,
        )
        self._task = asyncio.create_task(self.bot.start(self.settings.discord_token.get_secret_value()))
        await wait_for_bot(emu, self._task)
        return self.bot

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.engine is not None:
            await self.engine.close()
        apply_discord_endpoints(None, None)
        self.bot = self.engine = self._task = None


async def wait_for_bot(
    emu: DiscordEmulator, task: asyncio.Future[Any] | None = None, timeout: float = 30
) -> None:
    """Until the bot is connected and its commands are synced (or its task died)."""
    ready = asyncio.ensure_future(_ready(emu, timeout))
    waiters: set[asyncio.Future[Any]] = {ready}
    if task is not None:
        waiters.add(task)
    done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task is not None and task.done():
            task.result()  # raises the bot's error
        raise TimeoutError("the bot did not become ready")
    ready.result()


async def _ready(emu: DiscordEmulator, timeout: float) -> None:
    await emu.wait_until_ready(timeout=timeout)
    await emu.wait_for_commands(["imagine"], timeout=timeout)


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, emu: DiscordEmulator) -> AsyncIterator[InProcessBot]:
    runner = InProcessBot(settings)
    await runner.start(emu)
    try:
        yield runner
    finally:
        await runner.stop()


class BotProcess:
    """``python -m bot`` as a child process, configured only through environment variables."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=REPO_ROOT, env=self.env, stdout=log, stderr=log
        )
        log.close()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_for_message(
    emu: DiscordEmulator,
    predicate: Callable[[Any], bool],
    timeout: float = 30,
    description: str = "a message",
) -> Any:
    """The first message (in the emulator's channel) matching ``predicate``."""
    found: list[Any] = []

    def check() -> bool:
        found[:] = [m for m in emu.messages() if predicate(m)]
        return bool(found)

    try:
        await emu.wait_for(check, timeout=timeout)
    except TimeoutError:
        contents = [(m.id, m.content[:80], m.custom_ids()) for m in emu.messages()]
        raise TimeoutError(f"no {description} within {timeout}s; messages: {contents}") from None
    return found[0]


def is_final_grid(message: Any) -> bool:
    return len(message.custom_ids()) == 9 and not message.deleted
