"""Sandbox fixtures: a running sandbox (emulator + real bot + web channel) and a real headless chromium.

The browser is Debian's ``chromium`` driven by playwright (``executable_path``; playwright never downloads a
browser here). Without it the browser tests are skipped, except under ``.ci/run``
(``IMAGINEBOT_REQUIRE_BROWSER=1``), which installs it and where they must run. A failed browser test leaves a
screenshot of every page it opened in ``test-artifacts/`` (or ``$SCREENSHOT_DIR``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sandbox.runner import Sandbox
from sandbox.settings import SandboxSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DIR = Path(os.environ.get("SCREENSHOT_DIR", REPO_ROOT / "test-artifacts"))


def sandbox_settings(data_dir: Path, **extra: Any) -> SandboxSettings:
    """A sandbox on a free port with the tiny model at 64 px and 4 steps (fast on 2 CPU cores)."""
    values: dict[str, Any] = {
        "sandbox_host": "127.0.0.1",
        "sandbox_port": 0,
        "sandbox_data_dir": data_dir,
        "model": None,
        "device": "cpu",
        "model_resolution": 64,
        "model_steps": 4,
        "progress_edit_interval": 0.2,
    }
    values.update(extra)
    return SandboxSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest_asyncio.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    running = Sandbox(sandbox_settings(tmp_path / "sandbox"))
    try:
        await running.start()
        yield running
        running.emulator.assert_clean()
    finally:
        await running.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


def _chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def _screenshot_dir() -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)


@pytest_asyncio.fixture
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh headless chromium context; on failure, screenshots of its pages go to ``SCREENSHOT_DIR``."""
    executable = _chromium()
    if executable is None:
        if os.environ.get("IMAGINEBOT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
        )
        context = await browser.new_context(viewport={"width": 1100, "height": 900})
        try:
            yield context
        finally:
            if request.node.stash.get(_FAILED, False):
                _screenshot_dir()
                for number, page in enumerate(context.pages):
                    path = SCREENSHOT_DIR / f"{request.node.name}-{number}.png"
                    await page.screenshot(path=str(path), full_page=True)
                    print(f"screenshot of the failed test's page: {path}")
            await context.close()
            await browser.close()


@pytest.fixture
def emu(emulator: Any) -> Any:
    """The shared emulator fixture under the short name the end-to-end tests use."""
    return emulator
