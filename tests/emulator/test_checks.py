"""The emulator's verdict and its newer rules, each shown to fire: unanswered interactions, responses left
"thinking…", natural 429s, early retries after an injected 429, modal limits and select-menu limits."""

from __future__ import annotations

from typing import Any

import aiohttp
import discord
import pytest
from discord.http import Route
from discord.webhook.async_ import async_context, interaction_response_params

from sandbox.discord_emulator import DiscordEmulator
from tests.emulator.test_emulator import running_bot


async def ignore(interaction: discord.Interaction, prompt: str) -> None:
    """A handler that never answers."""


async def defer_only(interaction: discord.Interaction, prompt: str) -> None:
    await interaction.response.defer(thinking=True)


async def defer_then_follow_up(interaction: discord.Interaction, prompt: str) -> None:
    await interaction.response.defer(thinking=True)
    await interaction.followup.send("done")


def kinds(emu: DiscordEmulator) -> list[str]:
    return [problem.split(":", 1)[0] for problem in emu.problems()]


@pytest.mark.emulator_allows(unanswered="the handler never answers, on purpose")
async def test_an_unanswered_interaction_fails_the_verdict(emu: DiscordEmulator) -> None:
    async with running_bot(emu, ignore) as bot:
        await emu.invoke_slash("imagine", {"prompt": "nothing"})
        await emu.wait_for(lambda: bot.interactions, 5)
    assert kinds(emu) == ["unanswered"] and "(imagine)" in emu.problems()[0]
    with pytest.raises(AssertionError, match="unanswered: slash command"):
        emu.assert_clean()
    emu.assert_clean(allow={"unanswered": "what this test checks"})


@pytest.mark.emulator_allows(thinking="the handler defers and stops, on purpose")
async def test_a_deferred_response_never_completed_fails_the_verdict(emu: DiscordEmulator) -> None:
    async with running_bot(emu, defer_only):
        ix = await emu.invoke_slash("imagine", {"prompt": "thinking"})
        assert await ix.wait_for_response(5) == 5
    assert kinds(emu) == ["thinking"] and str(ix.response_message_id) in emu.problems()[0]
    with pytest.raises(AssertionError, match="still says the bot is thinking"):
        emu.assert_clean()


async def test_a_follow_up_completes_the_deferred_response(emu: DiscordEmulator) -> None:
    async with running_bot(emu, defer_then_follow_up):
        ix = await emu.invoke_slash("imagine", {"prompt": "thinking"})
        assert await ix.wait_for_response(5) == 5
        await emu.wait_for(lambda: emu.get_message(ix.response_message_id).content == "done", 5)
    assert emu.problems() == []


def test_an_allowance_needs_a_known_check_and_a_reason() -> None:
    emu = DiscordEmulator()
    with pytest.raises(ValueError, match="needs a reason"):
        emu.assert_clean(allow={"unanswered": " "})
    with pytest.raises(ValueError, match="unknown emulator check 'unanswerd'"):
        emu.assert_clean(allow={"unanswerd": "a typo"})


async def test_a_natural_429_fails_the_verdict(emu: DiscordEmulator) -> None:
    url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
    headers = {"Authorization": f"Bot {emu.bot_token}"}
    async with aiohttp.ClientSession() as http:
        for i in range(6):
            async with http.post(url, json={"content": f"m{i}"}, headers=headers) as resp:
                assert resp.status == (429 if i == 5 else 200)
    assert kinds(emu) == ["rate_limits"] and "channel-message-create" in emu.problems()[0]
    emu.rate_limit_hits.clear()  # seen; the teardown verdict is checked to be clean otherwise


async def test_an_early_retry_after_an_injected_429_is_a_violation(emu: DiscordEmulator) -> None:
    url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
    headers = {"Authorization": f"Bot {emu.bot_token}"}
    emu.force_429(method="POST", path_contains="/messages", retry_after=30)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"content": "a"}, headers=headers) as resp:
            assert resp.status == 429 and (await resp.json())["retry_after"] == 30
        async with http.post(url, json={"content": "at once"}, headers=headers) as resp:
            assert resp.status == 200  # answered, but recorded
        assert len(emu.violations) == 1 and "before the retry_after of the 429" in emu.violations[0]
        emu.advance_clock(30)
        async with http.post(url, json={"content": "in time"}, headers=headers) as resp:
            assert resp.status == 200
        assert len(emu.violations) == 1

        emu.force_429(method="GET", path_contains="/users/@me", retry_after=30, is_global=True)
        async with http.get(f"{emu.api_base}/users/@me", headers=headers) as resp:
            assert resp.status == 429 and (await resp.json())["global"] is True
        async with http.get(f"{emu.api_base}/channels/{emu.channel_id}", headers=headers) as resp:
            assert resp.status == 200
        assert len(emu.violations) == 2 and "global 429" in emu.violations[1]
    emu.violations.clear()  # seen; the teardown verdict is checked to be clean otherwise


async def test_discord_py_waits_out_an_injected_429(emu: DiscordEmulator) -> None:
    emu.force_429(method="POST", path_contains=f"/channels/{emu.channel_id}/messages", retry_after=0.4)
    async with running_bot(emu) as bot:
        await bot.get_channel(emu.channel_id).send("hello")
    (limited, sent) = [r for r in emu.requests if r.method == "POST" and "/channels/" in r.path]
    assert (limited.status, sent.status) == (429, 200)
    assert sent.time - limited.time >= 0.4 - 0.005 and emu.problems() == []


def text_input(label: str = "Prompt", custom_id: str = "t", **extra: Any) -> dict[str, Any]:
    return {"type": 4, "custom_id": custom_id, "style": 1, "label": label, **extra}


def modal(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": "m",
        "title": "Remix",
        "components": [{"type": 1, "components": [item]} for item in inputs],
    }


BAD_MODALS: dict[str, tuple[dict[str, Any], str]] = {
    "long label": (modal(text_input("L" * 46)), "text input label of 46 chars"),
    "long value": (modal(text_input(value="v" * 4001)), "text input value of 4001 chars"),
    "six inputs": (modal(*(text_input(custom_id=f"t{i}") for i in range(6))), "6 inputs (1-5)"),
    "two in a row": (
        {**modal(), "components": [{"type": 1, "components": [text_input(), text_input(custom_id="u")]}]},
        "holds 2 inputs",
    ),
    "long max_length": (modal(text_input(max_length=4001)), "max_length is 4001"),
    "long Label label": (
        {**modal(), "components": [{"type": 18, "label": "L" * 46, "component": text_input()}]},
        "text input label of 46 chars",
    ),
}


async def answer_with_modal(interaction: discord.Interaction, prompt: str) -> None:
    data = BAD_MODALS[prompt][0] if prompt in BAD_MODALS else modal(text_input("L" * 45, value="v" * 4000))
    await async_context.get().create_interaction_response(
        interaction.id,
        interaction.token,
        session=interaction._session,
        params=interaction_response_params(type=9, data=data),
    )


@pytest.mark.emulator_allows(
    violations="the bot answers with a modal over each limit, on purpose",
    unanswered="a refused modal leaves its interaction unanswered",
)
async def test_modal_limits_are_enforced(emu: DiscordEmulator) -> None:
    async with running_bot(emu, answer_with_modal) as bot:
        ok = await emu.invoke_slash("imagine", {"prompt": "at the limits"})
        assert await ok.wait_for_response(5) == 9
        with pytest.raises(ValueError, match="at most 4000 characters"):
            await emu.submit_modal(ok, {"t": "x" * 4001})  # a user cannot type more than the input takes
        for count, (name, (_, rule)) in enumerate(BAD_MODALS.items(), start=1):
            await emu.invoke_slash("imagine", {"prompt": name})
            await emu.wait_for(lambda count=count: len(bot.errors) == count, 5)
            assert isinstance(bot.errors[-1], discord.HTTPException) and bot.errors[-1].code == 50035, name
            assert rule in emu.violations[-1], (name, emu.violations[-1])
    assert len(emu.violations) == len(BAD_MODALS)


def select(**extra: Any) -> dict[str, Any]:
    options = [{"label": f"Option {i}", "value": f"v{i}"} for i in range(3)]
    return {"type": 3, "custom_id": "pick", "options": options, **extra}


def option(i: int, **extra: Any) -> dict[str, Any]:
    return {"label": f"Option {i}", "value": f"v{i}", **extra}


BAD_SELECTS: dict[str, tuple[dict[str, Any], str]] = {
    "no options": (select(options=[]), "string select with 0 options"),
    "26 options": (select(options=[option(i) for i in range(26)]), "string select with 26 options"),
    "long option label": (select(options=[option(0, label="L" * 101)]), "select option label of 101"),
    "long option value": (select(options=[option(0, value="v" * 101)]), "select option value of 101"),
    "long description": (select(options=[option(0, description="d" * 101)]), "description of 101"),
    "same values": (select(options=[option(0), option(1, value="v0")]), "duplicate select option value"),
    "long placeholder": (select(placeholder="p" * 151), "select placeholder of 151"),
    "min over max": (select(min_values=3, max_values=2), "min_values 3 > max_values 2"),
    "max over options": (select(max_values=4), "max_values 4 > its 3 options"),
    "max over 25": (select(max_values=26), "max_values is 26"),
}


@pytest.mark.emulator_allows(violations="the bot sends a select menu over each limit, on purpose")
async def test_select_menu_limits_are_enforced(emu: DiscordEmulator) -> None:
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=emu.channel_id)
    button = {"type": 2, "style": 1, "label": "b", "custom_id": "b"}
    bodies = {name: {"components": [{"type": 1, "components": [s]}]} for name, (s, _) in BAD_SELECTS.items()}
    bodies["select and button"] = {"components": [{"type": 1, "components": [select(), button]}]}
    rules = {name: rule for name, (_, rule) in BAD_SELECTS.items()} | {"select and button": "a select fills"}
    async with running_bot(emu) as bot:
        good = {"components": [{"type": 1, "components": [select(max_values=3, placeholder="p" * 150)]}]}
        await bot.http.request(route, json=good)
        assert emu.violations == []
        for name, body in bodies.items():
            with pytest.raises(discord.HTTPException) as info:
                await bot.http.request(route, json=body)
            assert info.value.code == 50035, name
            assert rules[name] in emu.violations[-1], (name, emu.violations[-1])
    assert len(emu.violations) == len(bodies)
