"""The prompt language end to end: parameters reaching the engine, the bad-input catalogue, moderation,
/settings and /prefer, permutations with confirmation, and image prompts."""

from __future__ import annotations

import contextlib
import io
import ipaddress
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web
from PIL import Image
from sqlmodel import col, select

from engine.safe_fetch import FetchPolicy
from storage.models import AuditEntry, Job, LedgerEntry
from storage.states import JobState
from tests.e2e.harness import bot_settings, is_final_grid, running_bot, wait_for_message
from tests.e2e.test_tiers_and_admin import command

DEFERRED, MESSAGE = 5, 4


async def jobs_of(bot, *where) -> list[Job]:
    async with bot.database.sessions() as session:
        statement = select(Job).where(*where).order_by(col(Job.created_at))
        return list((await session.exec(statement)).all())


async def charges_of(bot, job_id: str) -> list[LedgerEntry]:
    async with bot.database.sessions() as session:
        statement = select(LedgerEntry).where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "charge")
        return list((await session.exec(statement)).all())


async def imagine_and_wait(emu, prompt, user=None, **kwargs):
    ix = await emu.invoke_slash("imagine", {"prompt": prompt}, user=user, **kwargs)
    assert await ix.wait_for_response(3) == DEFERRED
    return await wait_for_message(emu, lambda m: m.id == ix.response_message_id and is_final_grid(m))


def png_bytes(size=(48, 32), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_parameters_reach_the_job_and_the_message(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        grid = await imagine_and_wait(
            emu, "castle::2 fog::-0.5 --s 1000 --q .5 --tile --no rain --seed 7 --chaos 30"
        )
        (job,) = await jobs_of(runner.bot)
        assert job.steps == 2  # --q .5 of MODEL_STEPS=4
        assert job.params.guidance == pytest.approx(3.0)  # --s 1000
        assert job.params.tile is True
        assert job.params.engine_prompt == "castle" and "fog" in (job.params.engine_negative or "")
        assert "rain" in (job.params.engine_negative or "")
        request = await runner.bot.jobs._request_for(job)  # what the engine was asked for
        assert request.prompt_parts == (("castle", 2.0), ("fog", -0.5)) and request.negative_prompt == "rain"
        assert request.chaos == 30
        # the prompt as interpreted: --q .5 became --steps 2 (of MODEL_STEPS=4), --s is spelled out, and the
        # parameters come in one canonical order
        assert grid.content == (
            "**castle::2 fog::-0.5 --no rain --steps 2 --chaos 30 --stylize 1000 --tile --seed 7** - "
            f"<@{emu.default_user.id}> (fast)"
        )
    emu.assert_clean()


CATALOGUE = [
    ("", "empty"),
    ("x" * 10_000, "characters"),
    ("a\x07b", "control"),
    ("a fox --ar 0:1", "--ar"),
    ("a fox --ar 99999:1", "--ar"),
    ("a fox --seed -1", "--seed"),
    ("a fox --seed 1e9999", "--seed"),
    ("a fox --q banana", "--q"),
    ("a {red, blue fox", "{"),
    ("a::1 fox::-2", "weight"),
    ("a fox --bogus 1", "--bogus"),
    ("a fox --model x;rm", "--model"),
    ("https://example.com/a.png a fox", "Image links are turned off"),
    ("a BaDw0rd fox", "moderator"),
]


async def test_the_bad_input_catalogue_answers_privately_and_creates_nothing(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", banned_words="badword")
    async with running_bot(settings, emu) as runner:
        for prompt, fragment in CATALOGUE:
            ix = await emu.invoke_slash("imagine", {"prompt": prompt})
            assert await ix.wait_for_response(3) == MESSAGE, prompt[:40]
            answer = emu.get_message(ix.response_message_id)
            assert answer.ephemeral and fragment.lower() in answer.content.lower(), (
                prompt[:40],
                answer.content,
            )
            assert len(answer.content) < 400
        assert await jobs_of(runner.bot) == []
    emu.assert_clean()


async def test_moderation_escalates_to_a_timed_block(emu, tiny_model_dir, tmp_path):
    admin, member = emu.add_user("admin"), emu.add_user("member")
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", admin_user_ids=str(admin.id))
    async with running_bot(settings, emu) as runner:
        assert "added" in await command(emu, "admin banned-words", {"action": "add", "term": "dragon"}, admin)
        for attempt in ("a dragon", "a d r a g o n", "a DR4GON!"):
            ix = await emu.invoke_slash("imagine", {"prompt": attempt}, user=member)
            assert await ix.wait_for_response(3) == MESSAGE
        assert "blocked until" in emu.get_message(ix.response_message_id).content
        ix = await emu.invoke_slash("imagine", {"prompt": "a kitten"}, user=member)
        assert await ix.wait_for_response(3) == MESSAGE
        assert "blocked until" in emu.get_message(ix.response_message_id).content
        async with runner.bot.database.sessions() as session:
            audit = (
                await session.exec(select(AuditEntry).where(col(AuditEntry.action) == "auto-block"))
            ).all()
        assert [entry.target for entry in audit] == [str(member.id)]
        assert await jobs_of(runner.bot) == []
    emu.assert_clean()


async def test_settings_and_suffix_apply_under_the_prompt(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        assert "--ar 3:2" in await command(emu, "prefer suffix", {"text": "--ar 3:2"})
        assert "stylize 0" in await command(emu, "settings", {"stylize": 0})
        await imagine_and_wait(emu, "a boat")
        await imagine_and_wait(emu, "a boat --ar 1:1 --s 1000")
        first, second = sorted(await jobs_of(runner.bot), key=lambda job: job.created_at)
        assert (first.width, first.height) == (80, 56) and first.params.guidance == pytest.approx(11.0)
        assert (second.width, second.height) == (64, 64) and second.params.guidance == pytest.approx(3.0)
        assert "not valid" in await command(emu, "prefer suffix", {"text": "--seed banana"})
    emu.assert_clean()


async def test_permutations_ask_for_confirmation_above_the_threshold(emu, tiny_model_dir, tmp_path):
    member = emu.add_user("member")
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        await runner.bot.accounts.update(member.id, tier="pro")
        small = await emu.invoke_slash("imagine", {"prompt": "a {red, green} fox --steps 1"}, user=member)
        assert await small.wait_for_response(3) == DEFERRED
        await emu.wait_for(lambda: _jobs_done(runner.bot, 2), timeout=30, what="two permutation jobs")

        big = await emu.invoke_slash(
            "imagine", {"prompt": "a {red, green, blue} owl --repeat 2 --steps 1"}, user=member
        )
        assert await big.wait_for_response(3) == MESSAGE
        question = emu.get_message(big.response_message_id)
        assert question.ephemeral and "6 jobs" in question.content
        assert len(await jobs_of(runner.bot)) == 2  # nothing queued before the answer
        yes = question.custom_ids()[0]
        click = await emu.click(question.id, yes, user=member)
        assert await click.wait_for_response(3) == DEFERRED
        await emu.wait_for(lambda: _jobs_done(runner.bot, 8), timeout=60, what="all permutation jobs")
        owls = sorted(job.prompt for job in await jobs_of(runner.bot, col(Job.prompt).contains("owl")))
        assert owls == ["a blue owl"] * 2 + ["a green owl"] * 2 + ["a red owl"] * 2
    emu.assert_clean()


async def test_an_attached_image_is_an_image_prompt(emu, tiny_model_dir, tmp_path):
    async with running_bot(bot_settings(emu, tiny_model_dir, tmp_path / "data"), emu) as runner:
        grid = await imagine_and_wait(
            emu, "make it blue --iw 2", attachments={"image": ("in.png", png_bytes())}
        )
        (job,) = await jobs_of(runner.bot)
        assert job.operation == "img2img" and job.params.init_image_key
        assert (job.params.strength or 1.0) < 0.6  # --iw 2 keeps more of the image than the default
        assert grid.attachments

        ix = await emu.invoke_slash(
            "imagine", {"prompt": "oops"}, attachments={"image": ("x.png", b"not an image")}
        )
        assert await ix.wait_for_response(3) == DEFERRED
        answer = await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and "could not be used" in m.content
        )
        assert not answer.custom_ids()
        _, refused = await jobs_of(runner.bot)  # saved before the image was read, then ended uncharged
        assert refused.state == JobState.FAILED and refused.error == answer.content
        assert await charges_of(runner.bot, refused.id) == []
    emu.assert_clean()


@contextlib.asynccontextmanager
async def image_server(
    image: bytes, hosts: tuple[str, ...]
) -> AsyncIterator[tuple[dict[str, int], list[str]]]:
    """Serves ``/good.png`` on each host (a port each); yields the ports by host and the requests seen."""
    seen: list[str] = []

    async def good(request: web.Request) -> web.Response:
        seen.append(f"{request.host} {request.path}")
        return web.Response(body=image, content_type="image/png")

    app = web.Application()
    app.router.add_get("/good.png", good)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports: dict[str, int] = {}
    try:
        for host in hosts:
            site = web.TCPSite(runner, host, 0)
            await site.start()
            ports[host] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield ports, seen
    finally:
        await runner.cleanup()


async def test_image_links_when_turned_on(emu, tiny_model_dir, tmp_path):
    """IMAGE_URLS=true: the bot's own call of the fetcher. A loopback link is refused with its reason before
    anything is fetched; a link to a server the policy allows (127.0.0.2 here, standing in for a public
    host) is downloaded and becomes the job's init image."""
    served = png_bytes((48, 32), (30, 200, 60))
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", image_urls="true")
    async with (
        image_server(served, ("127.0.0.1", "127.0.0.2")) as (ports, seen),
        running_bot(settings, emu) as runner,
    ):
        runner.bot.fetch_policy = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),))
        loopback = f"http://127.0.0.1:{ports['127.0.0.1']}/good.png"
        ix = await emu.invoke_slash("imagine", {"prompt": f"{loopback} a fox"})
        assert await ix.wait_for_response(3) == DEFERRED
        answer = await wait_for_message(
            emu, lambda m: m.id == ix.response_message_id and "could not be used" in m.content
        )
        assert answer.content == (
            "That image could not be used: The image link points to a private or internal network address; "
            "only public addresses are allowed."
        )
        (refused,) = await jobs_of(runner.bot)  # saved before the link was read, then ended uncharged
        assert seen == [] and (refused.state, refused.error) == (JobState.FAILED, answer.content)
        assert await charges_of(runner.bot, refused.id) == []

        good = f"http://127.0.0.2:{ports['127.0.0.2']}/good.png"
        grid = await imagine_and_wait(emu, f"{good} make it blue")
        assert seen == [f"127.0.0.2:{ports['127.0.0.2']} /good.png"]
        _, job = await jobs_of(runner.bot)
        assert job.operation == "img2img" and grid.attachments
        init = await runner.bot.jobs.store.get_image(job.params.init_image_key)
        expected = Image.open(io.BytesIO(served)).convert("RGB")
        assert init.size == expected.size
        assert np.array_equal(np.asarray(init.convert("RGB")), np.asarray(expected))


async def _jobs_done(bot, count: int) -> bool:
    return len(await jobs_of(bot, col(Job.state) == JobState.SUCCEEDED)) >= count
