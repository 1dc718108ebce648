"""Reading request bodies (JSON or multipart ``payload_json`` + ``files[n]``) and building attachments."""

from __future__ import annotations

import io
import json
import mimetypes
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .errors import APIError

_FILE_FIELD = re.compile(r"^files\[(\d+)\]$|^file(\d*)$")


@dataclass
class Upload:
    """One uploaded file part; ``index`` is n in ``files[n]``."""

    index: int
    filename: str
    content_type: str
    data: bytes


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    """Return (payload, uploads) for a JSON or multipart request; an empty body gives ``{}``."""
    if request.content_type.startswith("multipart/"):
        payload: dict[str, Any] = {}
        uploads: list[Upload] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            name = part.name or ""  # type: ignore[union-attr]
            raw = await part.read()  # type: ignore[union-attr]
            if name == "payload_json":
                payload = _loads(raw)
                continue
            m = _FILE_FIELD.match(name)
            if m is None:
                continue
            index = int(m.group(1) if m.group(1) is not None else (m.group(2) or 0))
            filename = part.filename or f"file{index}"  # type: ignore[union-attr]
            ctype = part.headers.get("Content-Type", "application/octet-stream")  # type: ignore[union-attr]
            if ctype == "application/octet-stream":
                ctype = mimetypes.guess_type(filename)[0] or ctype
            uploads.append(Upload(index, filename, ctype, bytes(raw)))
        return payload, uploads
    raw = await request.read()
    if not raw:
        return {}, []
    return _loads(raw), []


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise APIError(
            400, 50109, "The request body contains invalid JSON.", rule="body is not valid JSON"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, 50035, "Invalid Form Body", rule="body is not a JSON object")
    return data


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of an image, or None if Pillow cannot read it."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None
