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
MAX_SELECT_OPTIONS = 25
MAX_SELECT_TEXT = 100  # option label, value and description
MAX_PLACEHOLDER = 150
MAX_MODAL_TITLE = 45
MAX_MODAL_INPUTS = 5
MAX_MODAL_LABEL = 45
MAX_INPUT_VALUE = 4000
MAX_INPUT_PLACEHOLDER = 100
SELECT_TYPES = (3, 5, 6, 7, 8)  # string, user, role, mentionable, channel
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
        if item.get("type") == 1 and any(c.get("type") in SELECT_TYPES for c in children or []):
            if len(children or []) > 1:
                raise invalid_form_body(
                    f"{path}.components",
                    "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                    "The specified component exceeds the maximum width",
                    rule=f"action row {path} holds a select menu and {len(children or []) - 1} more components "
                    "(a select fills its row)",
                )
        if item.get("type") in SELECT_TYPES:
            _check_select(item, path)
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


def _check_length(value: Any, low: int, high: int, path: str, what: str) -> None:
    """``value`` (when present) must be a string of ``low``..``high`` characters."""
    if value is None and low == 0:
        return
    if not isinstance(value, str) or not low <= len(value) <= high:
        size = len(value) if isinstance(value, str) else "?"
        raise invalid_form_body(
            path,
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between {low} and {high} in length.",
            rule=f"{what} of {size} chars ({low}-{high})",
        )


def _check_range(value: Any, low: int, high: int, path: str, what: str) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise invalid_form_body(
            path,
            "NUMBER_TYPE_MAX" if isinstance(value, int) and value > high else "NUMBER_TYPE_MIN",
            f"{what} must be between {low} and {high}.",
            rule=f"{what} is {value!r} ({low}-{high})",
        )


def _check_select(item: dict[str, Any], path: str) -> None:
    """A select menu: options (string selects), their texts, placeholder and min/max values."""
    _check_length(item.get("placeholder"), 0, MAX_PLACEHOLDER, f"{path}.placeholder", "select placeholder")
    low, high = item.get("min_values", 1), item.get("max_values", 1)
    _check_range(low, 0, MAX_SELECT_OPTIONS, f"{path}.min_values", "select min_values")
    _check_range(high, 1, MAX_SELECT_OPTIONS, f"{path}.max_values", "select max_values")
    if low > high:
        raise invalid_form_body(
            f"{path}.min_values",
            "SELECT_COMPONENT_MIN_VALUES_GREATER_THAN_MAX",
            "min_values must be less than or equal to max_values",
            rule=f"select min_values {low} > max_values {high}",
        )
    if item.get("type") != 3:
        return
    options = item.get("options")
    if not isinstance(options, list) or not 1 <= len(options) <= MAX_SELECT_OPTIONS:
        raise invalid_form_body(
            f"{path}.options",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_SELECT_OPTIONS} in length.",
            rule=f"string select with {len(options) if isinstance(options, list) else 'no'} options "
            f"(1-{MAX_SELECT_OPTIONS})",
        )
    if high > len(options):
        raise invalid_form_body(
            f"{path}.max_values",
            "BASE_TYPE_MAX",
            f"Must be less than or equal to {len(options)}.",
            rule=f"select max_values {high} > its {len(options)} options",
        )
    values: set[str] = set()
    for j, option in enumerate(options):
        where = f"{path}.options.{j}"
        _check_length(option.get("label"), 1, MAX_SELECT_TEXT, f"{where}.label", "select option label")
        _check_length(option.get("value"), 1, MAX_SELECT_TEXT, f"{where}.value", "select option value")
        _check_length(
            option.get("description"), 0, MAX_SELECT_TEXT, f"{where}.description", "select option description"
        )
        if option["value"] in values:
            raise invalid_form_body(
                f"{where}.value",
                "SELECT_COMPONENT_OPTION_VALUE_DUPLICATED",
                "Select component option values must be unique",
                rule=f"duplicate select option value {option['value']!r}",
            )
        values.add(option["value"])


def modal_inputs(data: dict[str, Any]) -> list[tuple[str, dict[str, Any], str | None]]:
    """A modal's text inputs as (field path, input, label), for both layouts: action rows holding a text input
    with its own ``label``, and Label components (type 18) wrapping one."""
    found: list[tuple[str, dict[str, Any], str | None]] = []
    for i, item in enumerate(data.get("components") or []):
        if item.get("type") == 1:
            for j, child in enumerate(item.get("components") or []):
                found.append((f"components.{i}.components.{j}", child, child.get("label")))
        elif item.get("type") == 18 and isinstance(item.get("component"), dict):
            found.append((f"components.{i}.component", item["component"], item.get("label")))
    return found


def validate_modal(data: dict[str, Any]) -> None:
    """A modal answer (callback type 9): custom_id, title, 1-5 inputs and each input's texts and lengths."""
    _check_length(data.get("custom_id"), 1, MAX_CUSTOM_ID, "data.custom_id", "modal custom_id")
    _check_length(data.get("title"), 1, MAX_MODAL_TITLE, "data.title", "modal title")
    rows = data.get("components") or []
    inputs = modal_inputs(data)
    if not 1 <= len(rows) <= MAX_MODAL_INPUTS or len(inputs) > MAX_MODAL_INPUTS:
        raise invalid_form_body(
            "data.components",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_MODAL_INPUTS} in length.",
            rule=f"a modal with {len(rows)} components and {len(inputs)} inputs (1-{MAX_MODAL_INPUTS})",
        )
    for i, item in enumerate(rows):
        if item.get("type") == 1 and len(item.get("components") or []) != 1:
            raise invalid_form_body(
                f"data.components.{i}.components",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 1 in length.",
                rule=f"modal action row {i} holds {len(item.get('components') or [])} inputs (exactly 1)",
            )
    for path, field, label in inputs:
        where = f"data.{path}"
        if field.get("type") != 4:
            continue  # selects in a Label: checked like message selects below
        _check_length(field.get("custom_id"), 1, MAX_CUSTOM_ID, f"{where}.custom_id", "text input custom_id")
        _check_length(label, 1, MAX_MODAL_LABEL, f"{where}.label", "text input label")
        _check_length(field.get("value"), 0, MAX_INPUT_VALUE, f"{where}.value", "text input value")
        _check_length(
            field.get("placeholder"),
            0,
            MAX_INPUT_PLACEHOLDER,
            f"{where}.placeholder",
            "text input placeholder",
        )
        low, high = field.get("min_length", 0), field.get("max_length", MAX_INPUT_VALUE)
        _check_range(low, 0, MAX_INPUT_VALUE, f"{where}.min_length", "text input min_length")
        _check_range(high, 1, MAX_INPUT_VALUE, f"{where}.max_length", "text input max_length")
    for path, field, _ in inputs:
        if field.get("type") in SELECT_TYPES:
            _check_select(field, f"data.{path}")


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
