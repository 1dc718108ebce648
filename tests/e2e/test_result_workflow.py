"""The result workflow end to end: a separated image's buttons, marks, ❤️, double clicks, who may click,
Remix mode's modal (also across a restart) and /show — real discord.py against the emulator, the tiny
model at 64 px."""

from __future__ import annotations

import asyncio
import sys

from sqlmodel import select

from storage.models import Favourite, Job
from storage.states import JobState
from tests.e2e.harness import InProcessBot, bot_settings, is_final_grid, running_bot, wait_for_message

MESSAGE, DEFERRED, MODAL = 4, 5, 9
PRIMARY, SUCCESS, SECONDARY = 1, 3, 2

# a 3:2 prompt at 64 px makes tiles of 80x56; each button's job has the engine's real output size
EXPECTED_SIZES = {
    "us": ("upscale_subtle", 160, 112, 1),
    "uc": ("upscale_creative", 160, 112, 1),
    "vs": ("vary_subtle", 80, 56, 4),
    "vx": ("vary_strong", 80, 56, 4),
    "z2": ("zoom_out_2x", 160, 112, 4),  # both sides doubled
    "z15": ("zoom_out_1.5x", 120, 88, 4),  # 56 x 1.5 = 84, rounded up to a multiple of 8
    "sq": ("make_square", 80, 80, 4),
    "pl": ("pan_left", 120, 56, 4),  # wider by half
    "pr": ("pan_right", 120, 56, 4),
    "pu": ("pan_up", 80, 88, 4),  # taller by half
    "pd": ("pan_down", 80, 88, 4),
}
SINGLE_ACTIONS = ["us", "uc", "vs", "vx", "z2", "z15", "sq", "pl", "pr", "pu", "pd", "f"]


def job_id_of(message) -> str:
    return message.custom_ids()[0].split(":")[2]


def styles(message) -> dict[str, int]:
    return {c["custom_id"]: c["style"] for row in message.components for c in row.get("components", [])}


def finished(message) -> bool:
    return bool(message.attachments) and bool(message.custom_ids()) and not message.loading


async def all_jobs(bot) -> list[Job]:
    async with bot.database.sessions() as session:
        return list((await session.exec(select(Job))).all())


async def grid_of(emu, prompt: str, user=None):
    ix = await emu.invoke_slash("imagine", {"prompt": prompt}, user=user)
    assert await ix.wait_for_response(3) == DEFERRED
    return await wait_for_message(emu, lambda m: m.id == ix.response_message_id and is_final_grid(m))


async def answer_of(emu, ix) -> str:
    assert await ix.wait_for_response(3) == MESSAGE
    answer = emu.get_message(ix.response_message_id)
    assert answer.ephemeral
    return answer.content


async def one_job_of_two(emu, first, second) -> None:
    """Two presses of the same thing: one makes the job (deferred, then its grid), the other is told
    privately that it is already being worked on."""
    responses = sorted([await first.wait_for_response(3), await second.wait_for_response(3)])
    assert responses == [MESSAGE, DEFERRED]
    late = first if first.responses[0] == MESSAGE else second
    assert "already working" in emu.get_message(late.response_message_id).content
    made = second if late is first else first
    await wait_for_message(emu, lambda m: m.id == made.response_message_id and is_final_grid(m))


async def test_single_image_buttons_make_jobs_of_the_right_size(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot, user = runner.bot, emu.default_user
        await bot.accounts.update(user.id, tier="pro")  # room in the queue for all eleven buttons at once
        grid = await grid_of(emu, "a red fox in snow --ar 3:2 --seed 42")
        grid_id = job_id_of(grid)

        # U1: the separated image, with the single-image buttons; U1 turns primary on the grid
        ix = await emu.click(grid.id, f"ib:u:{grid_id}:0")
        assert await ix.wait_for_response(3) == DEFERRED
        single = await wait_for_message(emu, lambda m: m.id == ix.response_message_id and finished(m))
        single_id = job_id_of(single)
        assert single.custom_ids() == [f"ib:{a}:{single_id}" for a in SINGLE_ACTIONS]
        assert f"/{grid.id}" in single.content  # links the message it came from
        await emu.wait_for(lambda: styles(emu.get_message(grid.id))[f"ib:u:{grid_id}:0"] == PRIMARY)
        assert styles(emu.get_message(grid.id))[f"ib:u:{grid_id}:1"] == SECONDARY

        # every engine button of the single image at once: each one job, answered within 3 s
        clicks = {a: await emu.click(single.id, f"ib:{a}:{single_id}") for a in EXPECTED_SIZES}
        for ix in clicks.values():
            assert await ix.wait_for_response(3) == DEFERRED
        results = {
            a: await wait_for_message(
                emu, lambda m, ix=ix: m.id == ix.response_message_id and finished(m), timeout=60
            )
            for a, ix in clicks.items()
        }
        jobs = {job.operation: job for job in await all_jobs(bot) if job.parent_job_id == single_id}
        assert len(jobs) == len(EXPECTED_SIZES)
        for action, (operation, width, height, count) in EXPECTED_SIZES.items():
            job = jobs[operation]
            assert (job.width, job.height) == (width, height), action
            images = await bot.jobs.repo.images(job.id)
            assert [(i.width, i.height) for i in images] == [(width, height)] * count, action
            # upscales get the reduced set, the others a grid's U/V/🔄
            expected_buttons = 3 if count == 1 else 9
            assert len(results[action].custom_ids()) == expected_buttons, action
        assert "Zoom Out by" in results["z2"].content and "Upscaled (Subtle) by" in results["us"].content

        # the used buttons are green on the single image's message; ❤️ is not a job
        def all_marked() -> bool:
            now = styles(emu.get_message(single.id))
            return all(now[f"ib:{a}:{single_id}"] == SUCCESS for a in EXPECTED_SIZES)

        await emu.wait_for(all_marked, timeout=15, what="every used button marked")
        assert styles(emu.get_message(single.id))[f"ib:f:{single_id}"] == SECONDARY

        # ❤️ toggles the clicker's favourite, privately
        assert "Added" in await answer_of(emu, await emu.click(single.id, f"ib:f:{single_id}"))
        async with bot.database.sessions() as session:
            assert (await session.get(Favourite, (user.id, single_id))) is not None
        assert "Removed" in await answer_of(emu, await emu.click(single.id, f"ib:f:{single_id}"))
        async with bot.database.sessions() as session:
            assert (await session.get(Favourite, (user.id, single_id))) is None

        await emu.wait_for(
            lambda: all_terminal(bot), timeout=15, what="all jobs to finish"
        )  # the last result is posted a moment before its row says SUCCEEDED
    emu.assert_clean()


async def all_terminal(bot) -> bool:
    return all(JobState(job.state).terminal for job in await all_jobs(bot))


async def test_double_click_owner_remix_and_show(emu, tiny_model_dir, tmp_path, database_url):
    mallory = emu.add_user("mallory")
    async with running_bot(
        bot_settings(emu, tiny_model_dir, tmp_path / "data", database_url=database_url), emu
    ) as runner:
        bot, user = runner.bot, emu.default_user
        grid = await grid_of(emu, "lighthouse at dusk --seed 3")
        grid_id = job_id_of(grid)

        # a double click makes one job; the second click is answered privately
        first, second = await asyncio.gather(
            emu.click(grid.id, f"ib:v:{grid_id}:0"), emu.click(grid.id, f"ib:v:{grid_id}:0")
        )
        await one_job_of_two(emu, first, second)
        # ...and a click shortly after the first job finished is still the same click
        assert "already working" in await answer_of(emu, await emu.click(grid.id, f"ib:v:{grid_id}:0"))
        assert [j.kind for j in await all_jobs(bot)].count("variation") == 1

        # someone else: "not your job", nothing runs
        refused = await emu.click(grid.id, f"ib:u:{grid_id}:1", user=mallory)
        assert "not your job" in await answer_of(emu, refused)
        assert len(await all_jobs(bot)) == 2

        # Remix mode: 🔄 opens a modal with the prompt; the edited prompt makes the job
        await bot.accounts.update(user.id, remix=True)
        opened = await emu.click(grid.id, f"ib:r:{grid_id}")
        assert await opened.wait_for_response(3) == MODAL
        assert "lighthouse at dusk" in str(opened.modal)
        bad = await emu.submit_modal(opened, {"prompt": "a lighthouse --ar 0:1"})
        assert "--ar" in await answer_of(emu, bad)
        assert len(await all_jobs(bot)) == 2
        opened = await emu.click(grid.id, f"ib:r:{grid_id}")
        assert await opened.wait_for_response(3) == MODAL
        submitted = await emu.submit_modal(opened, {"prompt": "a castle at dawn --seed 9"})
        assert await submitted.wait_for_response(3) == DEFERRED
        remixed = await wait_for_message(
            emu, lambda m: m.id == submitted.response_message_id and is_final_grid(m)
        )
        assert remixed.content.startswith("**a castle at dawn --seed 9** - ")
        reroll = next(j for j in await all_jobs(bot) if j.kind == "reroll")
        assert (reroll.prompt, reroll.seed, reroll.parent_job_id) == ("a castle at dawn", 9, grid_id)

        # /show: the owner gets the result back with fresh buttons; others and bad ids get private answers
        shown = await emu.invoke_slash("show", {"job_id": grid_id})
        assert await shown.wait_for_response(3) == DEFERRED
        again = await wait_for_message(emu, lambda m: m.id == shown.response_message_id and finished(m))
        assert again.custom_ids() == grid.custom_ids() and again.id != grid.id
        assert all(style == SECONDARY for style in styles(again).values())
        assert "no job" in await answer_of(
            emu, await emu.invoke_slash("show", {"job_id": grid_id}, user=mallory)
        )
        assert "not a job id" in await answer_of(emu, await emu.invoke_slash("show", {"job_id": "nope"}))
        await emu.wait_for(lambda: all_terminal(bot), timeout=15, what="all jobs to finish")
    emu.assert_clean()


async def test_buttons_for_everyone(emu, tiny_model_dir, tmp_path):
    mallory = emu.add_user("mallory")
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", buttons_for_everyone="true")
    async with running_bot(settings, emu) as runner:
        grid = await grid_of(emu, "harbour --seed 5")
        ix = await emu.click(grid.id, f"ib:u:{job_id_of(grid)}:2", user=mallory)
        assert await ix.wait_for_response(3) == DEFERRED
        await wait_for_message(emu, lambda m: m.id == ix.response_message_id and finished(m))
        upscale = next(j for j in await all_jobs(runner.bot) if j.kind == "upscale")
        assert upscale.user_id == mallory.id
        await emu.wait_for(lambda: all_terminal(runner.bot), timeout=15, what="all jobs to finish")
    emu.assert_clean()


async def test_a_remix_modal_opened_before_a_restart_is_submitted_after_it(emu, tiny_model_dir, tmp_path):
    """discord.py forgets its Modal objects with the process: the submit is handled from its custom_id,
    with the same checks as a live modal (prompt errors, who may use the job)."""
    admin = emu.add_user("admin")
    user = emu.default_user
    data = tmp_path / "data"
    runner = InProcessBot(bot_settings(emu, tiny_model_dir, data, admin_user_ids=str(admin.id)))
    bot = await runner.start(emu)
    opened = {}
    try:
        grid = await grid_of(emu, "lighthouse at dusk --seed 3")
        grid_id = job_id_of(grid)
        for who in (user, admin):
            await bot.accounts.update(who.id, remix=True)
        for name, who, custom_id in (
            ("reroll", user, f"ib:r:{grid_id}"),
            ("bad", user, f"ib:v:{grid_id}:1"),
            ("admin", admin, f"ib:v:{grid_id}:0"),  # an admin may remix anyone's job...
        ):
            opened[name] = await emu.click(grid.id, custom_id, user=who)
            assert await opened[name].wait_for_response(3) == MODAL
    finally:
        await runner.stop()

    # ...but after the restart they are not an admin any more
    runner = InProcessBot(bot_settings(emu, tiny_model_dir, data))
    bot = await runner.start(emu)
    try:
        submitted = await emu.submit_modal(opened["reroll"], {"prompt": "a castle at dawn --seed 9"})
        assert await submitted.wait_for_response(3) == DEFERRED
        remixed = await wait_for_message(
            emu, lambda m: m.id == submitted.response_message_id and is_final_grid(m)
        )
        assert remixed.content.startswith("**a castle at dawn --seed 9** - ")
        bad = await emu.submit_modal(opened["bad"], {"prompt": "a lighthouse --ar 0:1"})
        assert "--ar" in await answer_of(emu, bad)
        refused = await emu.submit_modal(opened["admin"], {"prompt": "a ship"})
        assert "not your job" in await answer_of(emu, refused)

        children = [j for j in await all_jobs(bot) if j.parent_job_id == grid_id]
        assert [(j.kind, j.prompt, j.seed, j.user_id) for j in children] == [
            ("reroll", "a castle at dawn", 9, user.id)
        ]
        await emu.wait_for(
            lambda: styles(emu.get_message(grid.id))[f"ib:r:{grid_id}"] == PRIMARY, what="🔄 marked"
        )
        await emu.wait_for(lambda: all_terminal(bot), timeout=15, what="all jobs to finish")
    finally:
        await runner.stop()
    assert all(len(ix.responses) == 1 for ix in emu.interactions())
    emu.assert_clean()


async def test_a_live_remix_modal_makes_one_job_per_submit(emu, tiny_model_dir, tmp_path, monkeypatch):
    """While discord.py still holds the Modal, it and the ``on_interaction`` fallback both see the submit:
    it is answered once and makes one job; a double submit makes one job too; a timed-out modal works."""
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot, user = runner.bot, emu.default_user
        await bot.accounts.update(user.id, remix=True)
        grid = await grid_of(emu, "harbour at night --seed 4")
        grid_id = job_id_of(grid)

        opened = await emu.click(grid.id, f"ib:v:{grid_id}:2")
        assert await opened.wait_for_response(3) == MODAL
        first, second = await asyncio.gather(
            emu.submit_modal(opened, {"prompt": "harbour at dawn"}),
            emu.submit_modal(opened, {"prompt": "harbour at dawn"}),  # a double press of Submit
        )
        await one_job_of_two(emu, first, second)

        # a modal discord.py has dropped (its timeout passed) is still handled from its custom_id
        monkeypatch.setattr(sys.modules["cogs.buttons"], "MODAL_TIMEOUT", 0.1)  # the loaded extension
        opened = await emu.click(grid.id, f"ib:v:{grid_id}:3")
        assert await opened.wait_for_response(3) == MODAL
        await asyncio.sleep(0.5)
        submitted = await emu.submit_modal(opened, {"prompt": "harbour in fog"})
        assert await submitted.wait_for_response(3) == DEFERRED
        await wait_for_message(emu, lambda m: m.id == submitted.response_message_id and is_final_grid(m))

        variations = sorted(
            (j.prompt, j.parent_index) for j in await all_jobs(bot) if j.parent_job_id == grid_id
        )
        assert variations == [("harbour at dawn", 2), ("harbour in fog", 3)]
        await emu.wait_for(lambda: all_terminal(bot), timeout=15, what="all jobs to finish")
    assert all(len(ix.responses) == 1 and not ix.rejected for ix in emu.interactions())
    emu.assert_clean()


async def test_a_burst_of_clicks_is_marked_with_few_edits_within_the_budget(emu, tiny_model_dir, tmp_path):
    """U1–U4 and 🔄 of one grid and U1–U4 of another clicked at once (U jobs need no engine, so the test
    stays quick): each grid is edited once or twice to show its used buttons, and the marks take the
    shared budget's slots (its channel bucket spaces them)."""
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        bot = runner.bot
        await bot.accounts.update(emu.default_user.id, tier="pro")  # room for all the clicks' jobs
        first = await grid_of(emu, "a red fox --seed 1")
        second = await grid_of(emu, "a blue fox --seed 2")
        wanted = {first.id: first.custom_ids()[:5], second.id: second.custom_ids()[:4]}
        clicks = await asyncio.gather(*(emu.click(m, c) for m, ids in wanted.items() for c in ids))
        for ix in clicks:
            assert await ix.wait_for_response(3) == DEFERRED

        def marked() -> bool:
            return all(styles(emu.get_message(m))[c] == PRIMARY for m, ids in wanted.items() for c in ids)

        await emu.wait_for(marked, timeout=30, what="every clicked button marked")
        assert styles(emu.get_message(second.id))[second.custom_ids()[4]] == SECONDARY  # 🔄 not clicked
        assert styles(emu.get_message(first.id))[first.custom_ids()[5]] == SECONDARY  # nor V1
        await emu.wait_for(lambda: all_terminal(bot), timeout=30, what="all jobs to finish")

    channel_edits = {
        m: [
            r.time
            for r in emu.requests
            if r.method == "PATCH" and r.path.endswith(f"/{m}") and "/channels/" in r.path
        ]
        for m in wanted
    }
    assert all(1 <= len(times) <= 2 for times in channel_edits.values()), channel_edits
    times = sorted(t for ts in channel_edits.values() for t in ts)
    period = 1 / bot.edit_budget.channel_rate
    assert all(b - a >= period - 0.15 for a, b in zip(times, times[1:], strict=False)), times
    assert emu.rate_limit_hits == []
    emu.assert_clean()
