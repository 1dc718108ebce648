"""Applying a create or edit payload to a message, with the v10 attachment rule and validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bodies import Upload, image_size
from .errors import APIError
from .records import EPHEMERAL, LOADING, Attachment, Message
from .validation import validate_message

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

_UNSET = object()


def _make_attachment(emu: DiscordEmulator, upload: Upload, meta: dict[str, Any] | None) -> Attachment:
    att_id = emu.snowflakes.next()
    filename = (meta or {}).get("filename") or upload.filename
    size = image_size(upload.data) if upload.content_type.startswith("image/") else None
    att = Attachment(
        id=att_id,
        filename=filename,
        content_type=upload.content_type,
        data=upload.data,
        url=f"{emu.base_url}/attachments/{att_id}/{filename}",
        width=size[0] if size else None,
        height=size[1] if size else None,
        description=(meta or {}).get("description"),
    )
    return att


def resolve_attachments(
    emu: DiscordEmulator, payload: dict[str, Any], uploads: list[Upload], existing: list[Attachment]
) -> tuple[list[Attachment], list[Attachment]]:
    """The attachment list after a create/edit, and the new ones.

    v10 rule: ``attachments`` (if present) is the full list to keep; entries whose id is an existing attachment's
    id keep it, entries whose id is n refer to ``files[n]``. Absent: keep the existing ones. Uploads never
    referenced are appended.
    """
    by_index = {u.index: u for u in uploads}
    used: set[int] = set()
    new: list[Attachment] = []
    if "attachments" in payload and payload["attachments"] is not None:
        kept: list[Attachment] = []
        current = {a.id: a for a in existing}
        for meta in payload["attachments"]:
            raw_id = meta.get("id")
            try:
                ref = int(raw_id)
            except (TypeError, ValueError):
                raise APIError(
                    400, 50035, "Invalid Form Body", rule=f"attachment entry with bad id {raw_id!r}"
                ) from None
            if ref in current:
                kept.append(current[ref])
            elif ref in by_index:
                att = _make_attachment(emu, by_index[ref], meta)
                used.add(ref)
                kept.append(att)
                new.append(att)
            else:
                raise APIError(
                    400,
                    50035,
                    "Invalid Form Body",
                    rule=f"attachments[] refers to id {ref}, neither an existing attachment nor an uploaded files[n]",
                )
        result = kept
    else:
        result = list(existing)
    for upload in uploads:
        if upload.index not in used:
            att = _make_attachment(emu, upload, None)
            result.append(att)
            new.append(att)
    return result, new


def apply_payload(
    emu: DiscordEmulator,
    msg: Message,
    payload: dict[str, Any],
    uploads: list[Upload],
    *,
    size_limit: int,
    is_edit: bool,
) -> None:
    """Validate the resulting message first, then change ``msg`` in place (a rejected request changes nothing)."""
    content = payload.get("content", _UNSET if is_edit else "")
    content = msg.content if content is _UNSET else (content or "")
    if not isinstance(content, str):
        content = str(content)
    embeds = payload.get("embeds", msg.embeds if is_edit else []) or []
    if "embed" in payload and payload["embed"]:
        embeds = [payload["embed"]]
    components = payload.get("components", msg.components if is_edit else []) or []
    attachments, new = resolve_attachments(emu, payload, uploads, msg.attachments if is_edit else [])
    validate_message(
        content=content,
        embeds=embeds,
        attachments=attachments,
        components=components,
        new_uploads=new,
        size_limit=size_limit,
    )
    msg.content = content
    msg.embeds = embeds
    msg.components = components
    msg.attachments = attachments
    for att in new:
        emu._attachments[att.id] = att
    if is_edit:
        msg.flags &= ~LOADING
        if "flags" in payload and payload["flags"] is not None:
            # only SUPPRESS_EMBEDS (4) may change on edit; ephemeral stays as created
            msg.flags = (msg.flags & ~4) | (int(payload["flags"]) & 4)
    else:
        msg.flags |= int(payload.get("flags") or 0) & (EPHEMERAL | 4 | 4096)
