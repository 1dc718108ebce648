"""How results look in Discord: headlines, the buttons' ``custom_id`` codec, the button labels, the views.

A button's ``custom_id`` is ``ib:<action>:<job id>[:<tile>]`` (at most 41 characters), so the click
carries everything needed and discord.py routes it by pattern, with no per-message state to lose:

=========  =====================  ==========================================================
action     button                 job it makes (kind / engine operation, ``bot.results``)
=========  =====================  ==========================================================
``u``      U1–U4 (grid, tile)     UPSCALE: the tile on its own, no engine
``v``      V1–V4 (grid, tile)     VARIATION / img2img
``r``      🔄 (grid)              REROLL: same prompt, new seed
``us``     Upscale (Subtle)       ENHANCE / upscale_subtle (2x)
``uc``     Upscale (Creative)     ENHANCE / upscale_creative (2x)
``vs``     Vary (Subtle)          VARIATION / vary_subtle
``vx``     Vary (Strong)          VARIATION / vary_strong
``z2``     Zoom Out 2x            OUTPAINT / zoom_out_2x
``z15``    Zoom Out 1.5x          OUTPAINT / zoom_out_1.5x
``sq``     Make Square            OUTPAINT / make_square
``pl`` …   ⬅️ ➡️ ⬆️ ⬇️              OUTPAINT / pan_left, pan_right, pan_up, pan_down
``f``      ❤️                     none: toggles the clicker's favourite flag on the job
=========  =====================  ==========================================================

Buttons of a single image carry no tile (the image is index 0). The remix modal's ``custom_id`` is
``ib:m:<action>:<job id>[:<tile>]`` and its text input's is ``prompt``, so a submit carries everything
too (``RemixSubmit``).

This module renders only; it imports no other cog. A clicked ``JobButton`` hands the click to the
loaded cog that implements ``ClickHandler`` (``cogs/buttons.py``), so the extensions load in any order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import discord

from bot.results import BUTTON_ACTIONS, ButtonAction, used_key
from storage.models import Job, JobKind


@dataclass(frozen=True)
class ButtonLook:
    """How one button action is shown."""

    action: ButtonAction
    label: str | None = None
    emoji: str | None = None

    @property
    def used_style(self) -> discord.ButtonStyle:
        grid = self.action.code in ("u", "v", "r")
        return discord.ButtonStyle.primary if grid else discord.ButtonStyle.success


_LOOKS: dict[str, tuple[str | None, str | None]] = {
    "r": (None, "🔄"),
    "us": ("Upscale (Subtle)", None),
    "uc": ("Upscale (Creative)", None),
    "vs": ("Vary (Subtle)", None),
    "vx": ("Vary (Strong)", None),
    "z2": ("Zoom Out 2x", None),
    "z15": ("Zoom Out 1.5x", None),
    "sq": ("Make Square", None),
    "pl": (None, "⬅️"),
    "pr": (None, "➡️"),
    "pu": (None, "⬆️"),
    "pd": (None, "⬇️"),
    "f": (None, "❤️"),
}

BUTTONS: dict[str, ButtonLook] = {
    code: ButtonLook(action, *_LOOKS.get(code, (None, None))) for code, action in BUTTON_ACTIONS.items()
}
_ACTION_PATTERN = "|".join(sorted(BUTTONS, key=len, reverse=True))

SINGLE_ROWS = (("us", "uc", "vs", "vx"), ("z2", "z15", "sq"), ("pl", "pr", "pu", "pd"), ("f",))
"""The buttons of a separated image (U1–U4 results and every other single-image job)."""
UPSCALED_ROWS = (("vs", "vx", "f"),)
"""An Upscale (Subtle/Creative) result: no further upscale, zoom or pan (Midjourney shows a reduced set)."""


# -- custom_id codec ----------------------------------------------------------------------------------


def custom_id_for(action: str, job_id: str, tile: int | None = None) -> str:
    return f"ib:{action}:{job_id}" + (f":{tile}" if tile is not None else "")


def remix_custom_id(action: str, job_id: str, tile: int | None = None) -> str:
    return "ib:m:" + custom_id_for(action, job_id, tile)[3:]


REMIX_INPUT = "prompt"
_REMIX_ID = re.compile(rf"ib:m:(?P<action>{_ACTION_PATTERN}):(?P<job>[0-9a-f]{{32}})(?::(?P<tile>[0-3]))?")


@dataclass(frozen=True)
class RemixSubmit:
    """What a remix modal's submit says: which button of which job, and the edited prompt."""

    action: str
    job_id: str
    tile: int | None
    text: str

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> RemixSubmit | None:
        """From a modal submit's ``interaction.data``; None when the modal is not one of ours."""
        match = _REMIX_ID.fullmatch(str((data or {}).get("custom_id", "")))
        if match is None or not BUTTON_ACTIONS[match["action"]].remixable:
            return None
        text = _input_value(data.get("components", []) if data else [], REMIX_INPUT)
        tile = match["tile"]
        return cls(match["action"], match["job"], int(tile) if tile is not None else None, text or "")


def _input_value(components: Any, custom_id: str) -> str | None:
    """The submitted value of a modal's text input, in an action row (type 1) or a label (type 18)."""
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id and "value" in component:
            return str(component["value"])
        nested = component.get("components") or ([component["component"]] if "component" in component else [])
        found = _input_value(nested, custom_id)
        if found is not None:
            return found
    return None


# -- buttons and views --------------------------------------------------------------------------------


@runtime_checkable
class ClickHandler(Protocol):
    """The cog that answers result buttons (``cogs.buttons.ResultsCog``)."""

    async def handle_click(
        self, interaction: discord.Interaction, action: str, job_id: str, tile: int | None
    ) -> None: ...


CLICK_HANDLER_COG = "ResultsCog"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=rf"ib:(?P<action>{_ACTION_PATTERN}):(?P<job>[0-9a-f]{{32}})(?::(?P<tile>[0-3]))?",
):
    def __init__(
        self,
        action: str,
        job_id: str,
        tile: int | None = None,
        row: int | None = None,
        used: bool = False,
    ) -> None:
        look = BUTTONS[action]
        style = look.used_style if used else discord.ButtonStyle.secondary
        label = look.label
        if action in ("u", "v"):
            label = f"{action.upper()}{(tile or 0) + 1}"
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            label=label, emoji=look.emoji, style=style, custom_id=custom_id_for(action, job_id, tile)
        )
        super().__init__(button, row=row)
        self.action, self.job_id, self.tile = action, job_id, tile

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        tile = match["tile"]
        return cls(match["action"], match["job"], int(tile) if tile is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        get_cog = getattr(interaction.client, "get_cog", None)
        handler = get_cog(CLICK_HANDLER_COG) if get_cog is not None else None
        if not isinstance(handler, ClickHandler):
            await interaction.response.send_message(
                "The buttons are not available right now.", ephemeral=True
            )
            return
        await handler.handle_click(interaction, self.action, self.job_id, self.tile)


def result_view(job: Job, image_count: int, used: frozenset[str] | set[str] = frozenset()) -> discord.ui.View:
    """Grid results get U1–U4 + 🔄 and V1–V4; a single image gets the single-image set (reduced after
    an Upscale). ``used``: ``used_key``s of buttons already used (shown coloured)."""
    view = discord.ui.View(timeout=None)
    if image_count >= 2:
        for tile in range(image_count):
            view.add_item(JobButton("u", job.id, tile, row=0, used=used_key("u", tile) in used))
        view.add_item(JobButton("r", job.id, row=0, used="r" in used))
        for tile in range(image_count):
            view.add_item(JobButton("v", job.id, tile, row=1, used=used_key("v", tile) in used))
        return view
    rows = UPSCALED_ROWS if job.kind == JobKind.ENHANCE else SINGLE_ROWS
    for row, actions in enumerate(rows):
        for action in actions:
            view.add_item(JobButton(action, job.id, row=row, used=action != "f" and action in used))
    return view


# -- headlines ----------------------------------------------------------------------------------------


def headline(job: Job) -> str:
    """``**prompt** - <@user>`` in Midjourney's wording for each kind of job."""
    display = discord.utils.escape_mentions(discord.utils.escape_markdown(job.params.display or job.prompt))
    mention = f"<@{job.user_id}>"
    # a button's result links the message it came from (an interaction response cannot be a reply)
    mention += f" · {job.params.reply_to}" if job.params.reply_to else ""
    if job.kind == JobKind.UPSCALE and job.parent_index is not None:
        return f"**{display}** - Image #{job.parent_index + 1} {mention}"
    if job.operation in _BY_OPERATION and job.kind != JobKind.IMAGINE:
        return f"**{display}** - {_BY_OPERATION[job.operation]} by {mention}"
    if job.kind == JobKind.VARIATION:
        return f"**{display}** - Variations by {mention}"
    return f"**{display}** - {mention}"


_BY_OPERATION = {
    "upscale_subtle": "Upscaled (Subtle)",
    "upscale_creative": "Upscaled (Creative)",
    "vary_subtle": "Variations (Subtle)",
    "vary_strong": "Variations (Strong)",
    "zoom_out_2x": "Zoom Out",
    "zoom_out_1.5x": "Zoom Out",
    "make_square": "Make Square",
    "pan_left": "Pan Left",
    "pan_right": "Pan Right",
    "pan_up": "Pan Up",
    "pan_down": "Pan Down",
}
"""Midjourney's wording for the result of each single-image button."""


def result_content(job: Job, image_count: int) -> str:
    """The text of a result message: the headline, and the mode for a grid."""
    return f"{headline(job)} ({job.mode})" if image_count > 1 else headline(job)
