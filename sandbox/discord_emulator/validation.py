"""Discord's message and command rules (see DISCORD.md's table); each check raises ``APIError``."""

from __future__ import annotations

import re
from typing import Any

from .errors import APIError, invalid_form_body
from .records import Attachment

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_ATTACHMENTS = 10
MAX_ACTION_ROWS = 5
MAX_ROW_ITEMS = 5
MAX_CUSTOM_ID = 100
MAX_LABEL = 80
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
MAX_COMMAND_OPTIONS = 25
MAX_COMMANDS = 100


def validate_message(
    *,
    content: str,
    embeds: list[dict[str, Any]],
    attachments: list[Attachment],
    components: list[dict[str, Any]],
    new_uploads: list[Attachment],
    size_limit: int,
) -> None:
    """Check a message's resulting state (after a create or an edit) against Discord's limits."""
    if len(content) > MAX_CONTENT:
        raise invalid_form_body(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_CONTENT} or fewer in length.",
            rule=f"content is {len(content)} chars (max {MAX_CONTENT})",
        )
    if len(embeds) > MAX_EMBEDS:
        raise invalid_form_body(
            "embeds",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_EMBEDS} or fewer in length.",
            rule=f"{len(embeds)} embeds (max {MAX_EMBEDS})",
        )
    if len(attachments) > MAX_ATTACHMENTS:
        raise invalid_form_body(
            "attachments",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_ATTACHMENTS} or fewer in length.",
            rule=f"{len(attachments)} attachments (max {MAX_ATTACHMENTS})",
        )
    for upload in new_uploads:
        if upload.size > size_limit:
            raise APIError(
                413,
                40005,
                "Request entity too large",
                rule=f"upload {upload.filename!r} is {upload.size} bytes (limit {size_limit})",
            )
    validate_components(components)
    if not content and not embeds and not attachments and not components:
        raise APIError(400, 50006, "Cannot send an empty message", rule="message would be empty")


def validate_components(rows: list[dict[str, Any]]) -> None:
    """Action rows, buttons per row, custom_id length/uniqueness and label length."""
    top_rows = [r for r in rows if r.get("type") == 1]
    if len(top_rows) > MAX_ACTION_ROWS:
        raise invalid_form_body(
            "components",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_ACTION_ROWS} or fewer in length.",
            rule=f"{len(top_rows)} action rows (max {MAX_ACTION_ROWS})",
        )
    seen: set[str] = set()

    def check(item: dict[str, Any], path: str) -> None:
        children = item.get("components")
        if item.get("type") == 1 and isinstance(children, list) and len(children) > MAX_ROW_ITEMS:
            raise invalid_form_body(
                f"{path}.components",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_ROW_ITEMS} or fewer in length.",
                rule=f"action row {path} has {len(children)} components (max {MAX_ROW_ITEMS})",
            )
        if "custom_id" in item:
            cid = item["custom_id"]
            if not isinstance(cid, str) or not 1 <= len(cid) <= MAX_CUSTOM_ID:
                raise invalid_form_body(
                    f"{path}.custom_id",
                    "BASE_TYPE_BAD_LENGTH",
                    f"Must be between 1 and {MAX_CUSTOM_ID} in length.",
                    rule=f"custom_id of {len(cid) if isinstance(cid, str) else '?'} chars (1-{MAX_CUSTOM_ID})",
                )
            if cid in seen:
                raise invalid_form_body(
                    f"{path}.custom_id",
                    "COMPONENT_CUSTOM_ID_DUPLICATED",
                    "Component custom id cannot be duplicated",
                    rule=f"duplicate custom_id {cid!r} in one message",
                )
            seen.add(cid)
        elif item.get("type") in (2, 3, 5, 6, 7, 8) and item.get("style") not in (5, 6):
            raise invalid_form_body(
                f"{path}.custom_id",
                "BASE_TYPE_REQUIRED",
                "This field is required",
                rule="interactive component without custom_id",
            )
        label = item.get("label")
        if isinstance(label, str) and len(label) > MAX_LABEL:
            raise invalid_form_body(
                f"{path}.label",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_LABEL} or fewer in length.",
                rule=f"label of {len(label)} chars (max {MAX_LABEL})",
            )
        for i, child in enumerate(children or []):
            check(child, f"{path}.components.{i}")
        for key in ("component", "accessory"):
            if isinstance(item.get(key), dict):
                check(item[key], f"{path}.{key}")

    for i, row in enumerate(rows):
        check(row, f"components.{i}")


def validate_commands(commands: list[dict[str, Any]]) -> None:
    """A bulk overwrite of one scope: names, descriptions, option counts, command count."""
    if len(commands) > MAX_COMMANDS:
        raise invalid_form_body(
            "_root",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_COMMANDS} or fewer in length.",
            rule=f"{len(commands)} commands in one scope (max {MAX_COMMANDS})",
        )
    names: set[tuple[int, str]] = set()
    for i, cmd in enumerate(commands):
        name = cmd.get("name", "")
        ctype = cmd.get("type", 1)
        if ctype == 1 and not COMMAND_NAME.match(name or ""):
            raise invalid_form_body(
                f"{i}.name",
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid",
                rule=f"command name {name!r} does not match ^[-_\\w]{{1,32}}$",
            )
        if (ctype, name) in names:
            raise invalid_form_body(
                f"{i}.name",
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                "Application command names must be unique",
                rule=f"duplicate command name {name!r}",
            )
        names.add((ctype, name))
        if ctype == 1 and not 1 <= len(cmd.get("description") or "") <= 100:
            raise invalid_form_body(
                f"{i}.description",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
                rule=f"command {name!r} description must be 1-100 chars",
            )
        _validate_options(cmd.get("options") or [], f"{i}.options", name)


def _validate_options(options: list[dict[str, Any]], path: str, command: str) -> None:
    if len(options) > MAX_COMMAND_OPTIONS:
        raise invalid_form_body(
            path,
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_COMMAND_OPTIONS} or fewer in length.",
            rule=f"command {command!r} has {len(options)} options (max {MAX_COMMAND_OPTIONS})",
        )
    for j, opt in enumerate(options):
        if not COMMAND_NAME.match(opt.get("name") or ""):
            raise invalid_form_body(
                f"{path}.{j}.name",
                "APPLICATION_COMMAND_INVALID_NAME",
                "Option name is invalid",
                rule=f"option name {opt.get('name')!r} of {command!r} is invalid",
            )
        if opt.get("type") in (1, 2):
            _validate_options(opt.get("options") or [], f"{path}.{j}.options", command)
