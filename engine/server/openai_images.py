"""The OpenAI Images API on the engine server: ``POST /v1/images/generations`` and ``POST /v1/images/edits``.

The engine token is the API key (``Authorization: Bearer <ENGINE_TOKEN>``, what the ``openai`` SDK sends).
Requests become ordinary jobs (same queue, limits and cache) and the answer comes when they are done:
``{"created", "data": [{"b64_json"} | {"url"}]}``. ``url`` links point at this server's ``/images/{key}``,
signed and valid for the results' retention period (``ENGINE_RESULTS_TTL``), fetchable without the key.
Errors use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Where we differ: ``model``, ``quality``, ``style`` and ``user`` are accepted and ignored (the server's
model draws); ``size`` is any ``WxH`` in multiples of 8 up to 2048 (or ``auto``: the model's default);
an edit is an img2img of the image (strength 0.75) and, with a mask (or transparency in the image),
only the transparent areas take the new pixels — the rest is the original, pasted back.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image

from engine.base import MAX_SEED, GenerationRequest, Operation
from engine.server.context import SERVER, RequestError, Server, result_images, run_and_wait
from engine.wire import MAX_PROMPT_CHARS, MAX_SIDE, decode_image_bytes

MAX_N = 10
EDIT_STRENGTH = 0.75
MAX_UPLOAD_PIXELS = 4096 * 4096


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/images/generations", generations)
    app.router.add_post("/v1/images/edits", edits)


def openai_error(
    status: int, message: str, code: str | None, param: str | None, kind: str = "invalid_request_error"
) -> web.Response:
    if status >= 500:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


async def generations(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    try:
        body = await request.json()
    except Exception:
        raise RequestError("We could not parse the JSON body of your request.", "invalid_json", 400) from None
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object.", "invalid_json", 400)
    prompt, n, size, response_format = _common(body, server)
    width, height = size or (server.config.resolution, server.config.resolution)
    generation = GenerationRequest(
        prompt=prompt, width=width, height=height, steps=server.config.steps, seed=_seed(), n=n
    )
    snapshot = await run_and_wait(server, generation)
    return await _answer(request, server, snapshot, response_format, prompt)


async def edits(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    if not request.content_type.startswith("multipart/"):
        raise RequestError("Edits take multipart/form-data (image, prompt, mask).", "invalid_request", 400)
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        name = part.name.removesuffix("[]")
        if part.filename is not None:
            if name not in files:  # several images: the first one is edited
                files[name] = await part.read()
        else:
            fields[name] = await part.text()
    if "image" not in files:
        raise RequestError("'image' is a required property", "missing_required_parameter", 400, "image")
    prompt, n, size_given, response_format = _common(fields, server, sized=False)
    image, alpha = await asyncio.to_thread(_image_and_alpha, files["image"], "image")
    mask = alpha
    if "mask" in files:
        _, mask = await asyncio.to_thread(_image_and_alpha, files["mask"], "mask")
        if mask is None:
            raise RequestError("The mask must be a PNG with an alpha channel.", "invalid_image", 400, "mask")
        if mask.size != image.size:
            raise RequestError("The mask must be the size of the image.", "invalid_image", 400, "mask")
    width, height = size_given or _fit(image.size)
    generation = GenerationRequest(
        prompt=prompt,
        width=width,
        height=height,
        steps=server.config.steps,
        seed=_seed(),
        n=n,
        operation=Operation.IMG2IMG,
        init_image=image,
        strength=EDIT_STRENGTH,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    snapshot = await run_and_wait(server, generation, buffer.getvalue())
    if mask is not None and snapshot["state"] == "SUCCEEDED":
        composited = []
        for data in await result_images(server, snapshot):
            result = Image.open(io.BytesIO(data)).convert("RGB")
            keep = mask.resize(result.size)  # opaque mask = keep the original there
            merged = Image.composite(image.resize(result.size), result, keep)
            out = io.BytesIO()
            merged.save(out, format="PNG")
            composited.append(await server.manager.keep_image(out.getvalue()))
        snapshot = {**snapshot, "images": [f"/images/{key}" for key in composited]}
    return await _answer(request, server, snapshot, response_format, prompt)


def _common(
    body: dict[str, Any], server: Server, *, sized: bool = True
) -> tuple[str, int, tuple[int, int] | None, str]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("'prompt' is a required property", "missing_required_parameter", 400, "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", "invalid_value", 400, "prompt"
        )
    try:
        n = int(body.get("n") or 1)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_N:
        raise RequestError(f"'n' must be from 1 to {MAX_N}", "invalid_value", 400, "n")
    size = _size(body.get("size"), server) if body.get("size") not in (None, "", "auto") else None
    if size is None and sized:
        size = (server.config.resolution, server.config.resolution)
    response_format = body.get("response_format") or "b64_json"
    if response_format not in ("b64_json", "url"):
        raise RequestError(
            "'response_format' must be 'b64_json' or 'url'", "invalid_value", 400, "response_format"
        )
    return prompt, n, size, response_format


def _size(value: Any, server: Server) -> tuple[int, int]:
    problem = RequestError(
        f"'size' must be WIDTHxHEIGHT in multiples of 8 up to {MAX_SIDE} (e.g. 512x512), or auto",
        "invalid_value",
        400,
        "size",
    )
    if not isinstance(value, str):
        raise problem
    width, _, height = value.lower().partition("x")
    try:
        w, h = int(width), int(height)
    except ValueError:
        raise problem from None
    if not (8 <= w <= MAX_SIDE and 8 <= h <= MAX_SIDE and w % 8 == 0 and h % 8 == 0):
        raise problem
    return w, h


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    """An uploaded image's size, in multiples of 8 within ``MAX_SIDE``."""
    scale = min(1.0, MAX_SIDE / max(size))
    width, height = (max(8, int(side * scale) // 8 * 8) for side in size)
    return width, height


def _image_and_alpha(data: bytes, field: str) -> tuple[Image.Image, Image.Image | None]:
    """The image as RGB, and an "keep" mask (L, 255 where it is opaque) when it has any transparency."""
    try:
        rgb = decode_image_bytes(data)
    except ValueError as error:
        raise RequestError(f"Invalid image: {error}.", "invalid_image", 400, field) from None
    with Image.open(io.BytesIO(data)) as source:
        if source.mode not in ("RGBA", "LA", "PA") and not (
            source.mode == "P" and "transparency" in source.info
        ):
            return rgb, None
        alpha = source.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:
        return rgb, None
    return rgb, alpha.resize(rgb.size).point(lambda value: 255 if value == 255 else 0)


def _seed() -> int:
    return random.randint(0, MAX_SEED)


async def _answer(
    request: web.Request, server: Server, snapshot: dict[str, Any], response_format: str, prompt: str
) -> web.Response:
    state = snapshot["state"]
    if state != "SUCCEEDED":
        error = snapshot.get("error") or {}
        if error.get("code") == "flagged":
            raise RequestError(
                "Your request was rejected by the safety system.", "content_policy_violation", 400
            )
        raise RequestError(
            error.get("message") or "The image could not be made.", error.get("code") or "server_error", 500
        )
    data = []
    if response_format == "url":
        origin = str(request.url.origin())
        for link in snapshot["images"]:
            key = link.rsplit("/", 1)[-1]
            data.append({"url": origin + server.signed_image_path(key, server.config.results_ttl)})
    else:
        for png in await result_images(server, snapshot):
            data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": prompt})
    return web.json_response({"created": int(time.time()), "data": data})
