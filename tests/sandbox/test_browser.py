"""The sandbox in a real headless chromium: the web channel drives the real bot through the emulator.

Waiting is done by playwright's selectors (they re-check on every DOM change), never by sleeping. The
progress state is made observable without a race: an admin pauses dispatch first, so the job shows
"(Waiting to start)" until the admin resumes it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sandbox.runner import Sandbox
from storage.gallery import GalleryRepository

TIMEOUT_MS = 120_000  # a wait's limit, not a delay: a loaded 2-core CI machine may need it
GRID_BUTTONS = 9

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def open_channel(browser: Any, sandbox: Sandbox) -> Any:
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(sandbox.url + "/")
    await page.wait_for_selector("#status[data-ready=yes]")
    return page


async def act_as(page: Any, role: str) -> None:
    await page.select_option("#viewer", role)
    await page.wait_for_selector(f"#status:has-text('connected as {'admin' if role == 'admin' else 'you'}')")


async def slash(page: Any, text: str, subcommand: str | None = None, **fields: str) -> None:
    """Type a slash command as a user does: the text, then its option fields, then Enter."""
    await page.fill("#input", "")
    await page.type("#input", text)
    if subcommand is not None:
        await page.select_option("#subcommand", subcommand)
    for name, value in fields.items():
        await page.select_option(f"[data-option={name}]", value)
    await page.press("#input", "Enter")
    await page.wait_for_function("document.querySelector('#input').value === ''")


def message_with(page: Any, text: str) -> Any:
    return page.locator(".msg", has_text=text)


async def wait_for_grid(page: Any, prompt: str) -> Any:
    grid = page.locator(".msg", has_text=prompt).filter(has=page.locator("button", has_text="V4"))
    await grid.locator("img.attachment").wait_for()
    assert await grid.locator(".row button").count() == GRID_BUTTONS
    return grid


async def _count(items: Awaitable[list[Any]], wanted: int) -> bool:
    return len(await items) >= wanted


async def image_loaded(locator: Any) -> bool:
    return bool(await locator.evaluate("img => img.complete && img.naturalWidth > 0"))


async def test_imagine_progress_grid_upscale_and_gallery(sandbox: Sandbox, browser: Any) -> None:
    page = await open_channel(browser, sandbox)
    assert "NOISE" in await page.inner_text("#model-note")  # the tiny model says what it is

    await act_as(page, "admin")
    await slash(page, "/admin", subcommand="pause")
    await message_with(page, "Dispatch paused").wait_for()

    await act_as(page, "member")
    assert await message_with(page, "Dispatch paused").count() == 0  # the admin's private answer
    await slash(page, "/imagine a red fox in snow --seed 42")
    waiting = message_with(page, "a red fox in snow").filter(has_text="Waiting to start")
    await waiting.wait_for()  # the progress state, held there by the paused queue
    assert await page.locator(".msg .used", has_text="you used /imagine").count() == 1

    await act_as(page, "admin")
    await slash(page, "/admin", subcommand="resume")
    await act_as(page, "member")
    grid = await wait_for_grid(page, "a red fox in snow")
    assert await image_loaded(grid.locator("img.attachment"))

    await grid.locator("button", has_text="U1").click()
    single = page.locator(".msg", has_text="a red fox in snow").filter(
        has=page.locator("button", has_text="Upscale (Subtle)")
    )
    await single.locator("img.attachment").wait_for()
    assert await image_loaded(single.locator("img.attachment"))
    if target := os.environ.get("SANDBOX_SCREENSHOT"):  # how docs/sandbox.png is made
        await page.set_viewport_size({"width": 1100, "height": 1250})
        await page.screenshot(path=target)

    assert sandbox.bot is not None and sandbox.bot.database is not None
    results = GalleryRepository(sandbox.bot.database)
    member = sandbox.users.member.id
    # the message is posted before the job is marked SUCCEEDED; the gallery lists succeeded jobs
    await sandbox.emulator.wait_for(
        lambda: _count(results.results(member), 2), timeout=TIMEOUT_MS / 1000, what="both jobs to succeed"
    )
    await page.click("#gallery-link")  # opens the gallery in a new tab, as the member
    gallery = await page.context.wait_for_event("page")
    await gallery.wait_for_load_state()
    items = gallery.locator(".item", has_text="a red fox in snow")
    assert await items.count() == 2  # the grid and the separated image, newest first
    assert "upscale" in await items.nth(0).inner_text()
    assert await image_loaded(items.nth(1).locator("img").first)
    assert "seed 42" in await items.nth(1).inner_text()


async def test_private_answers_image_prompts_and_the_remix_modal(
    sandbox: Sandbox, browser: Any, tmp_path: Path
) -> None:
    page = await open_channel(browser, sandbox)
    await slash(page, "/info")
    info = page.locator(".msg.ephemeral", has_text="Only you can see this")
    await info.wait_for()
    await act_as(page, "admin")
    assert await page.locator(".msg.ephemeral").count() == 0  # the member's /info is not shown to others
    await act_as(page, "member")

    await slash(page, "/settings", remix="true")
    await message_with(page, "emix").last.wait_for()

    start = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (0, 120, 255)).save(start)
    await page.fill("#input", "/imagine a blue square")
    await page.set_input_files("[data-option=image]", str(start))
    await page.press("#input", "Enter")
    grid = await wait_for_grid(page, "a blue square")

    await grid.locator("button", has_text="V1").click()
    modal = page.locator("#modal")
    await modal.wait_for()
    field = modal.locator("textarea")
    assert "a blue square" in await field.input_value()
    await field.fill("a blue square with a hat")
    await modal.locator("button[type=submit]").click()
    await wait_for_grid(page, "a blue square with a hat")
    assert await page.locator("#modal-backdrop").is_hidden()


async def test_bad_input_gets_a_short_answer_in_the_page(sandbox: Sandbox, browser: Any) -> None:
    page = await open_channel(browser, sandbox)
    await page.fill("#input", "hello there")
    await page.press("#input", "Enter")
    assert "slash commands" in await page.inner_text("#error")
    await slash(page, "/imagine a fox --ar 0:1")
    refusal = page.locator(".msg.ephemeral", has_text="--ar")
    await refusal.wait_for()
    assert "Traceback" not in await refusal.inner_text()
