"""The Discord API emulator against real discord.py 2.7.1: the happy path and each enforced rule."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.http import Route
from discord.webhook.async_ import async_context, interaction_response_params
from PIL import Image

from sandbox.discord_emulator import CommandNotSynced, DiscordEmulator

Handler = Callable[[discord.Interaction, str], Awaitable[None]]


def png_bytes(size: int = 64, color: str = "orange") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


class ResultView(discord.ui.View):
    """Two buttons; Upscale edits the message in place (type 7), Reroll defers and sends a follow-up."""

    def __init__(self, job: str) -> None:
        super().__init__(timeout=None)
        self.clicks: list[str] = []
        up = discord.ui.Button(label="Upscale", custom_id=f"upscale:{job}", style=discord.ButtonStyle.primary)
        re = discord.ui.Button(label="Reroll", custom_id=f"reroll:{job}")
        up.callback = self.upscale
        re.callback = self.reroll
        self.add_item(up)
        self.add_item(re)

    async def upscale(self, interaction: discord.Interaction) -> None:
        self.clicks.append("upscale")
        await interaction.response.edit_message(
            content="upscaled", attachments=[discord.File(io.BytesIO(png_bytes(128)), "up.png")]
        )

    async def reroll(self, interaction: discord.Interaction) -> None:
        self.clicks.append("reroll")
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send("rerolling", ephemeral=True)


async def happy_imagine(interaction: discord.Interaction, prompt: str) -> None:
    await interaction.response.defer(thinking=True)
    view = ResultView("job1")
    interaction.client.views.append(view)  # type: ignore[attr-defined]
    await interaction.edit_original_response(
        content=f"**{prompt}**", attachments=[discord.File(io.BytesIO(png_bytes()), "grid.png")], view=view
    )


class EmuBot(commands.Bot):
    """A minimal bot: one guild slash command ``/imagine`` whose body each test chooses."""

    def __init__(self, emu: DiscordEmulator, handler: Handler = happy_imagine) -> None:
        intents = discord.Intents.default()
        intents.members = False
        intents.presences = False
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.1)
        self.emu = emu
        self.handler = handler
        self.views: list[ResultView] = []
        self.errors: list[BaseException] = []
        self.interactions: list[discord.Interaction] = []
        guild = discord.Object(emu.guild_id)

        @app_commands.command(name="imagine", description="Generate an image")
        @app_commands.describe(prompt="What to draw")
        async def imagine(interaction: discord.Interaction, prompt: str) -> None:
            self.interactions.append(interaction)
            try:
                await self.handler(interaction, prompt)
            except Exception as exc:  # the test inspects what the bot ran into
                self.errors.append(exc)

        self.tree.add_command(imagine, guild=guild)

    async def setup_hook(self) -> None:
        await self.tree.sync(guild=discord.Object(self.emu.guild_id))


@contextlib.asynccontextmanager
async def running_bot(emu: DiscordEmulator, handler: Handler = happy_imagine) -> AsyncIterator[EmuBot]:
    bot = EmuBot(emu, handler)
    task = asyncio.create_task(bot.start(emu.bot_token))
    try:
        await emu.wait_for_commands(["imagine"], timeout=10)
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


async def test_happy_path_slash_defer_edit_and_buttons(emu: DiscordEmulator) -> None:
    async with running_bot(emu) as bot:
        ix = await emu.invoke_slash("imagine", {"prompt": "a fox"})
        assert await ix.wait_for_response(5) == 5
        msg = await emu.wait_for(
            lambda: (m := emu.get_message(ix.response_message_id)).attachments and m.components and m, 5
        )
        assert msg.content == "**a fox**" and not msg.loading and msg.type == 20
        assert msg.interaction_id == ix.id and msg.edit_count == 1
        assert [h["attachments"] for h in msg.history] == [[], ["grid.png"]]
        att = msg.attachments[0]
        assert (att.filename, att.width, att.height, att.content_type) == ("grid.png", 64, 64, "image/png")
        assert emu.attachment_bytes(att) == att.data and att.data.startswith(b"\x89PNG")
        async with aiohttp.ClientSession() as http, http.get(att.url) as resp:
            assert resp.status == 200 and await resp.read() == att.data
        assert msg.custom_ids() == ["upscale:job1", "reroll:job1"]

        click = await emu.click(msg.id, "upscale:job1")
        assert await click.wait_for_response(5) == 7
        edited = await emu.wait_for(lambda: (m := emu.get_message(msg.id)).content == "upscaled" and m, 5)
        assert [a.filename for a in edited.attachments] == ["up.png"] and edited.attachments[0].width == 128

        reroll = await emu.click(msg.id, "reroll:job1", user=emu.add_user("alice"))
        assert await reroll.wait_for_response(5) == 5
        followup = await emu.wait_for(
            lambda: (m := emu._messages.get(reroll.response_message_id)) and m.content == "rerolling" and m, 5
        )
        assert followup.ephemeral
        assert bot.views[0].clicks == ["upscale", "reroll"] and not bot.errors
    emu.assert_clean()
    assert emu.rate_limit_hits == []
    assert any(r.method == "PATCH" and r.path.endswith("/messages/@original") for r in emu.requests)


async def test_unsynced_command_raises(emu: DiscordEmulator) -> None:
    async with running_bot(emu):
        with pytest.raises(CommandNotSynced, match="nope"):
            await emu.invoke_slash("nope", {})


@pytest.mark.emulator_allows(
    violations="the bot acknowledges 4 s late on purpose",
    unanswered="its late acknowledgement is refused, so the command stays unanswered",
)
async def test_late_acknowledgement_is_refused(emu: DiscordEmulator) -> None:
    async def slow(interaction: discord.Interaction, prompt: str) -> None:
        emu.advance_clock(4)
        await interaction.response.defer()

    async with running_bot(emu, slow) as bot:
        ix = await emu.invoke_slash("imagine", {"prompt": "late"})
        await emu.wait_for(lambda: bot.errors, 5)
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062
    assert ix.responses == [] and len(emu.violations) == 1 and "limit 3s" in emu.violations[0]


@pytest.mark.emulator_allows(
    violations="the bot acknowledges twice on purpose",
    thinking="the handler stops at the refused second acknowledgement",
)
async def test_double_acknowledgement_is_refused(emu: DiscordEmulator) -> None:
    async def twice(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer()
        adapter = async_context.get()
        await adapter.create_interaction_response(
            interaction.id,
            interaction.token,
            session=interaction._session,
            params=interaction_response_params(type=5),
        )

    async with running_bot(emu, twice) as bot:
        ix = await emu.invoke_slash("imagine", {"prompt": "twice"})
        await emu.wait_for(lambda: bot.errors, 5)
    assert isinstance(bot.errors[0], discord.HTTPException) and bot.errors[0].code == 40060
    assert ix.responses == [5] and "second acknowledgement" in emu.violations[0]


@pytest.mark.emulator_allows(
    violations="the bot edits with a token 16 minutes old on purpose",
)
async def test_expired_token_edit_is_refused(emu: DiscordEmulator) -> None:
    async def defer_only(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer()

    async with running_bot(emu, defer_only) as bot:
        ix = await emu.invoke_slash("imagine", {"prompt": "slow queue"})
        await ix.wait_for_response(5)
        await bot.interactions[0].edit_original_response(content="in time")
        emu.advance_clock(16 * 60)
        with pytest.raises(discord.HTTPException) as info:
            await bot.interactions[0].edit_original_response(content="too late")
    assert info.value.status == 401 and info.value.code == 50027
    assert emu.get_message(ix.response_message_id).content == "in time"
    assert len(emu.violations) == 1 and "15 min" in emu.violations[0]


@pytest.mark.emulator_allows(
    violations="the bot sends one message over each limit on purpose",
    thinking="the over-long edit of the deferred response is refused",
)
async def test_message_limits_are_enforced(emu: DiscordEmulator) -> None:
    async def too_long(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="x" * 2001)

    async with running_bot(emu, too_long) as bot:
        await emu.invoke_slash("imagine", {"prompt": "long"})
        await emu.wait_for(lambda: bot.errors, 5)
        assert bot.errors[0].code == 50035 and "2000" in str(bot.errors[0])

        route = Route("POST", "/channels/{channel_id}/messages", channel_id=emu.channel_id)

        def button(cid: str, label: str = "b") -> dict[str, Any]:
            return {"type": 2, "style": 1, "label": label, "custom_id": cid}

        bad_bodies = {
            "rows": {
                "components": [
                    {"type": 1, "components": [button(f"{r}-{i}") for i in range(5)]} for r in range(6)
                ]
            },
            "duplicate": {"components": [{"type": 1, "components": [button("same"), button("same")]}]},
            "long id": {"components": [{"type": 1, "components": [button("x" * 101)]}]},
            "label": {"components": [{"type": 1, "components": [button("ok", "L" * 81)]}]},
            "empty": {"content": ""},
        }
        for name, body in bad_bodies.items():
            with pytest.raises(discord.HTTPException) as info:
                await bot.http.request(route, json=body)
            assert info.value.code == (50006 if name == "empty" else 50035), name
        channel = bot.get_channel(emu.channel_id)
        with pytest.raises(discord.HTTPException) as info:
            await channel.send(file=discord.File(io.BytesIO(b"\0" * (10 * 1024 * 1024 + 1)), "big.bin"))
        assert info.value.status == 413 and info.value.code == 40005
    assert len(emu.violations) == 7
    assert [m for m in emu.messages() if m.type == 0] == []


async def test_forced_429_on_edit_is_survived(emu: DiscordEmulator) -> None:
    emu.force_429(method="PATCH", path_contains="/messages/@original", count=1, retry_after=0.2)
    async with running_bot(emu) as bot:
        ix = await emu.invoke_slash("imagine", {"prompt": "busy"})
        msg = await emu.wait_for(
            lambda: (m := emu._messages.get(ix.response_message_id)) and m.attachments and m, 5
        )
        assert msg.content == "**busy**" and not bot.errors
    statuses = [r.status for r in emu.requests if r.method == "PATCH"]
    assert statuses == [429, 200]
    assert emu.rate_limit_hits == []
    emu.assert_clean()


async def test_forced_500_is_retried(emu: DiscordEmulator) -> None:
    emu.force_status(500, method="POST", path_contains=f"/channels/{emu.channel_id}/messages")
    async with running_bot(emu) as bot:
        sent = await bot.get_channel(emu.channel_id).send("hello")
        assert emu.get_message(sent.id).content == "hello"
    assert [r.status for r in emu.requests if r.method == "POST" and "/channels/" in r.path] == [500, 200]
    emu.assert_clean()


@pytest.mark.emulator_allows(
    rate_limits="the test posts past the channel's limit on purpose",
    violations="the test calls /users/@me without the bot token on purpose",
)
async def test_natural_rate_limit_answers_429_with_headers(emu: DiscordEmulator) -> None:
    url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
    headers = {"Authorization": f"Bot {emu.bot_token}"}
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            async with http.post(url, json={"content": f"m{i}"}, headers=headers) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
                assert resp.headers["X-RateLimit-Remaining"] == str(4 - i)
        async with http.post(url, json={"content": "m5"}, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 429 and resp.headers["Via"] and "Retry-After" in resp.headers
            assert body["global"] is False and 0 < body["retry_after"] <= 5
        async with http.get(f"{emu.api_base}/users/@me") as resp:
            assert resp.status == 401 and (await resp.json())["code"] == 0
    assert len(emu.rate_limit_hits) == 1 and emu.invalid_requests == 2
    emu.advance_clock(5)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"content": "m6"}, headers=headers) as resp,
    ):
        assert resp.status == 200


@pytest.mark.emulator_allows(
    unhandled="the bot calls a route the emulator does not know on purpose",
)
async def test_unhandled_route_is_recorded(emu: DiscordEmulator) -> None:
    async with running_bot(emu) as bot:
        with pytest.raises(discord.NotFound):
            await bot.http.request(Route("GET", "/guilds/{guild_id}/roles", guild_id=emu.guild_id))
    assert emu.unhandled == [f"GET /api/v10/guilds/{emu.guild_id}/roles"]
    with pytest.raises(AssertionError, match="unhandled: GET /api/v10/guilds/"):
        emu.assert_clean()


async def test_reconnect_resumes_the_session(emu: DiscordEmulator) -> None:
    async with running_bot(emu):
        session = emu.gateway.current
        await emu.send_reconnect(timeout=10)
        assert emu.gateway.current is session and session.resumes == 1 and emu.gateway.identifies == 1
        ix = await emu.invoke_slash("imagine", {"prompt": "after resume"})
        await emu.wait_for(lambda: (m := emu._messages.get(ix.response_message_id or 0)) and m.attachments, 5)
    emu.assert_clean()


async def test_second_bot_after_first_closes(emu: DiscordEmulator) -> None:
    async with running_bot(emu):
        pass
    assert not emu.gateway.connected
    with pytest.raises(TimeoutError, match="bot connected"):
        await emu.invoke_slash("imagine", {"prompt": "nobody"}, connect_timeout=0.2)
    async with running_bot(emu) as bot:
        assert emu.gateway.identifies == 2
        ix = await emu.invoke_slash("imagine", {"prompt": "second"})
        await emu.wait_for(lambda: (m := emu._messages.get(ix.response_message_id or 0)) and m.attachments, 5)
        assert not bot.errors
    emu.assert_clean()


@pytest.mark.emulator_allows(
    violations="the bot logs in with a wrong token on purpose",
)
async def test_bad_token_fails_login(emu: DiscordEmulator) -> None:
    bot = EmuBot(emu)
    with pytest.raises(discord.LoginFailure):
        await bot.login("wrong-token")
    await bot.close()


async def test_modal_and_attachment_option(emu: DiscordEmulator) -> None:
    got: dict[str, Any] = {}

    class Ask(discord.ui.Modal, title="Remix"):
        text = discord.ui.TextInput(label="New prompt", custom_id="remix:text")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            got["text"] = self.text.value
            await interaction.response.send_message(f"remix: {self.text.value}", ephemeral=True)

    bot = EmuBot(emu)

    @app_commands.command(name="describe", description="Describe an image")
    async def describe(interaction: discord.Interaction, image: discord.Attachment) -> None:
        got["image"] = (image.filename, image.width, await image.read())
        await interaction.response.send_modal(Ask())

    bot.tree.add_command(describe, guild=discord.Object(emu.guild_id))
    task = asyncio.create_task(bot.start(emu.bot_token))
    try:
        await emu.wait_for_commands(["imagine", "describe"], timeout=10)
        data = png_bytes(32)
        ix = await emu.invoke_slash("describe", attachments={"image": ("in.png", data)})
        assert await ix.wait_for_response(5) == 9 and ix.modal and ix.modal["custom_id"]
        assert got["image"] == ("in.png", 32, data)
        sub = await emu.submit_modal(ix, {"remix:text": "a cat"})
        assert await sub.wait_for_response(5) == 4
        msg = emu.get_message(sub.response_message_id)
        assert msg.content == "remix: a cat" and msg.ephemeral and got["text"] == "a cat"
        # an answered modal is closed, and nobody else could ever submit it
        with pytest.raises(ValueError, match="closed"):
            await emu.submit_modal(ix, {"remix:text": "again"})
        with pytest.raises(ValueError, match="another user"):
            await emu.submit_modal(ix, {"remix:text": "a dog"}, user=emu.add_user("other"))
    finally:
        await bot.close()
        await asyncio.wait_for(task, 5)
    emu.assert_clean()


SUBPROCESS_BOT = """
import asyncio, os, discord, yarl
from discord import app_commands
discord.http.Route.BASE = os.environ["DISCORD_API_BASE"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
guild = discord.Object(int(os.environ["GUILD_ID"]))
client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
tree = app_commands.CommandTree(client)

@tree.command(name="imagine", description="Generate an image", guild=guild)
async def imagine(interaction: discord.Interaction, prompt: str) -> None:
    await interaction.response.defer()
    await interaction.edit_original_response(content=f"pid {os.getpid()}: {prompt}")

@client.event
async def setup_hook() -> None:
    await tree.sync(guild=guild)

client.run(os.environ["DISCORD_TOKEN"], log_handler=None)
"""


async def test_bot_in_a_subprocess_and_a_restart(emu: DiscordEmulator, tmp_path: Any) -> None:
    import sys

    from sandbox.discord_emulator import bot_environment

    script = tmp_path / "bot.py"
    script.write_text(SUBPROCESS_BOT)
    env = bot_environment(emu) | {"GUILD_ID": str(emu.guild_id)}
    for round_ in (1, 2):
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env)
        try:
            await emu.wait_for(lambda r=round_: emu.gateway.identifies == r and emu.gateway.connected, 15)
            await emu.wait_for_commands(["imagine"], timeout=10)
            ix = await emu.invoke_slash("imagine", {"prompt": f"round {round_}"})
            msg = await emu.wait_for(
                lambda ix=ix: (m := emu._messages.get(ix.response_message_id or 0)) and m.edit_count and m, 10
            )
            assert msg.content == f"pid {proc.pid}: round {round_}"
        finally:
            proc.kill()  # an abrupt exit: the emulator must cope with the dropped socket
            await proc.wait()
        await emu.wait_for(lambda: not emu.gateway.connected, 5)
    emu.assert_clean()
