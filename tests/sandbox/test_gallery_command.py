"""`/gallery` on a real deployment (GALLERY_PORT): real discord.py through the emulator, then the link over HTTP."""

from __future__ import annotations

import re

import pytest

from storage.gallery import GalleryRepository
from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message
from tests.sandbox.http import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WAIT = 120  # a limit, not a delay: a loaded 2-core machine can take a minute for the tiny model's grid

LINK = re.compile(r"https?://\S+")


async def test_gallery_answers_privately_with_links_to_your_own_results(emu, tiny_model_dir, tmp_path):
    admin = emu.add_user("boss")
    settings = bot_settings(
        emu,
        tiny_model_dir,
        tmp_path / "data",
        gallery_port=0,
        gallery_secret="x" * 32,
        admin_user_ids=str(admin.id),
    )
    async with running_bot(settings, emu) as runner:
        ix = await emu.invoke_slash("imagine", {"prompt": "a lighthouse at dusk"})
        await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and is_final_grid(m), timeout=WAIT
        )
        assert runner.bot is not None and runner.bot.database is not None
        results = GalleryRepository(runner.bot.database)
        await emu.wait_for(
            lambda: results.results(emu.default_user.id), timeout=WAIT, what="the job to succeed"
        )
        other = emu.add_user("other")

        member_ix = await emu.invoke_slash("gallery")
        answer = await wait_for_message(emu, lambda m: m.id == member_ix.response_message_id, timeout=WAIT)
        other_ix = await emu.invoke_slash("gallery", user=other)
        other_answer = await wait_for_message(
            emu, lambda m: m.id == other_ix.response_message_id, timeout=WAIT
        )
        admin_ix = await emu.invoke_slash("gallery", user=admin)
        admin_answer = await wait_for_message(
            emu, lambda m: m.id == admin_ix.response_message_id, timeout=WAIT
        )

        assert answer.ephemeral and other_answer.ephemeral and admin_answer.ephemeral
        (own_link,) = LINK.findall(answer.content)  # a member gets one link: their results
        (others_link,) = LINK.findall(other_answer.content)
        results_link, admin_link = LINK.findall(admin_answer.content)
        async with Client() as client:
            own = await client.get(own_link)
            others = await client.get(others_link)
            queue = await client.get(admin_link)
            member_as_admin = await client.get(own_link.replace("/u/", "/admin/"))
            emu.advance_clock(60 * 60 + 1)  # GALLERY_LINK_MINUTES defaults to 60
            expired = await client.get(own_link)
        assert own.status_code == 200 and "a lighthouse at dusk" in own.text
        assert others.status_code == 200 and "a lighthouse at dusk" not in others.text
        assert queue.status_code == 200 and "Today" in queue.text
        assert member_as_admin.status_code == 403
        assert expired.status_code == 403 and "expired" in expired.text
    emu.assert_clean()


async def test_gallery_is_off_without_gallery_port(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu):
        names = {c["name"] for scope in emu.commands.values() for c in scope}
    assert "imagine" in names and "gallery" not in names
