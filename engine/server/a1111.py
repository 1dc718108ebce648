"""AUTOMATIC1111's ``/sdapi/v1`` on the engine server, for the tools that speak it (``webuiapi``, Krita and
Photoshop plug-ins, Open WebUI…).

Requests become ordinary jobs (same queue, batching, limits and result cache) and ``txt2img`` / ``img2img``
answer when they are done, in A1111's shape: ``{"images": [raw base64 PNG], "parameters": <the request>,
"info": "<JSON string>"}``. Unknown request keys are ignored, as A1111 does. Auth: the engine token as the
HTTP Basic password (A1111's ``--api-auth``; any user name) or as a bearer token.

Mapping: ``batch_size × n_iter`` images (at most 16) in one job; ``cfg_scale`` → guidance; ``seed`` -1 →
random, image *i* uses our tile seed (``engine.seeds.tile_seeds``), listed in ``info.all_seeds``;
``denoising_strength`` → img2img strength (ignored by txt2img, as A1111 does without hires fix);
``tiling`` → seamless; ``sampler_name`` and ``scheduler`` are accepted and ignored (the model's own
scheduler runs); ``override_settings.sd_model_checkpoint`` or ``POST options`` picks the model by alias.
Not supported (422): ``mask`` (inpainting), ``enable_hr`` (hires fix), scripts.

A1111 runs one job at a time, so its ``progress``, ``interrupt`` and ``skip`` are global. Here they apply
to the jobs that came in through ``/sdapi/v1``: ``progress`` reports the oldest running one (with its
latest preview as ``current_image``), ``interrupt`` cancels all of them (running and queued), ``skip``
does the same (we cannot return part of a batch). An interrupted ``txt2img`` answers 200 with no images,
as A1111 does. ``extra-single-image`` is our 2× upscale (Upscale Subtle) whatever ``upscaling_resize`` says.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from typing import Any

from aiohttp import web

from engine.base import MAX_SEED, MAX_STEPS, GenerationRequest, Operation
from engine.seeds import tile_seeds
from engine.server.context import SERVER, RequestError, Server, result_images, run_and_wait
from engine.wire import MAX_N, MAX_PROMPT_CHARS, MAX_SIDE, decode_base64_image

PREFIX = "/sdapi/v1"
A1111_JOBS = web.AppKey("a1111_jobs", set[str])
SAMPLER = "Default"


def add_routes(app: web.Application) -> None:
    jobs: set[str] = set()
    app[A1111_JOBS] = jobs
    app.router.add_post(f"{PREFIX}/txt2img", txt2img)
    app.router.add_post(f"{PREFIX}/img2img", img2img)
    app.router.add_get(f"{PREFIX}/progress", progress)
    app.router.add_post(f"{PREFIX}/interrupt", interrupt)
    app.router.add_post(f"{PREFIX}/skip", interrupt)
    app.router.add_get(f"{PREFIX}/sd-models", sd_models)
    app.router.add_get(f"{PREFIX}/samplers", samplers)
    app.router.add_get(f"{PREFIX}/schedulers", schedulers)
    app.router.add_get(f"{PREFIX}/upscalers", upscalers)
    app.router.add_get(f"{PREFIX}/scripts", scripts)
    app.router.add_get(f"{PREFIX}/options", get_options)
    app.router.add_post(f"{PREFIX}/options", set_options)
    app.router.add_post(f"{PREFIX}/extra-single-image", extra_single_image)


# -- generation ---------------------------------------------------------------------------------------------


async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, img2img=False)


async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, img2img=True)


async def _generate(request: web.Request, *, img2img: bool) -> web.Response:
    from engine.server.app import read_json

    server = request.app[SERVER]
    body = await read_json(request)
    for unsupported in ("mask", "enable_hr", "script_name"):
        if body.get(unsupported):
            raise RequestError(
                f"{unsupported} is not supported by this server", "invalid_request", 422, unsupported
            )
    prompt = _text(body, "prompt", required=True)
    negative = _text(body, "negative_prompt")
    width = _whole(body, "width", server.config.resolution, 8, MAX_SIDE)
    height = _whole(body, "height", server.config.resolution, 8, MAX_SIDE)
    width, height = width // 8 * 8, height // 8 * 8  # A1111 rounds to its latent grid too
    steps = _whole(body, "steps", server.config.steps, 1, MAX_STEPS)
    n = _whole(body, "batch_size", 1, 1, MAX_N) * _whole(body, "n_iter", 1, 1, MAX_N)
    if n > MAX_N:
        raise RequestError(
            f"batch_size × n_iter must be at most {MAX_N}", "invalid_request", 422, "batch_size"
        )
    seed = _whole(body, "seed", -1, -1, MAX_SEED)
    seed = random.randint(0, MAX_SEED) if seed == -1 else seed
    guidance = _number(body, "cfg_scale", 7.0, 0, 30)
    init_image = None
    init_png = None
    strength = 0.6
    if img2img:
        images = body.get("init_images")
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            raise RequestError("init_images needs one base64 image", "invalid_request", 422, "init_images")
        try:
            init_image = decode_base64_image(images[0])
        except ValueError as error:
            raise RequestError(f"init_images: {error}", "invalid_image", 422, "init_images") from None
        buffer = io.BytesIO()
        init_image.save(buffer, format="PNG")
        init_png = buffer.getvalue()
        strength = _number(body, "denoising_strength", 0.75, 0, 1) or 0.01
    overrides = body.get("override_settings")
    if not isinstance(overrides, dict):
        overrides = {}
    model = _model(server, overrides.get("sd_model_checkpoint") or server.a1111_model)
    generation = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        n=n,
        guidance=guidance,
        operation=Operation.IMG2IMG if img2img else Operation.TXT2IMG,
        init_image=init_image,
        strength=strength,
        model=model,
        tile=bool(body.get("tiling", False)),
    )
    snapshot = await _run(request, server, generation, init_png)
    if snapshot["state"] not in ("SUCCEEDED", "CANCELED"):
        failure = snapshot.get("error") or {}
        raise RequestError(
            failure.get("message") or "the image could not be made",
            failure.get("code") or "engine_error",
            500,
        )
    pngs = await result_images(server, snapshot)
    seeds = tile_seeds(seed, n)
    info = {
        "prompt": prompt,
        "all_prompts": [prompt] * n,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * n,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * n,
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": SAMPLER,
        "cfg_scale": guidance,
        "steps": steps,
        "batch_size": n,
        "restore_faces": False,
        "sd_model_name": model or server.config.model,
        "sd_model_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength if img2img else None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [
            f"{prompt}\nNegative prompt: {negative}\nSteps: {steps}, Sampler: {SAMPLER}, CFG scale: {guidance}, "
            f"Seed: {tile}, Size: {width}x{height}, Model: {model or server.config.model}"
            for tile in seeds
        ][: len(pngs)],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "imaginebot",
        "interrupted": snapshot["state"] == "CANCELED",
    }
    parameters = {key: value for key, value in body.items() if key != "init_images"}
    return web.json_response(
        {
            "images": [base64.b64encode(png).decode() for png in pngs],
            "parameters": parameters,
            "info": json.dumps(info),
        }
    )


async def _run(
    request: web.Request, server: Server, generation: GenerationRequest, init_png: bytes | None
) -> dict[str, Any]:
    """``run_and_wait``, remembering the job as an A1111 one (for progress and interrupt) meanwhile."""
    jobs: set[str] = request.app[A1111_JOBS]
    refusal = server.unavailable()
    if refusal is not None:
        raise refusal
    snapshot, _ = await server.manager.submit(generation, init_png=init_png)
    jobs.add(snapshot["id"])
    try:
        if snapshot["state"] in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED"):
            return snapshot
        return await run_and_wait_id(server, snapshot["id"])
    finally:
        jobs.discard(snapshot["id"])


async def run_and_wait_id(server: Server, job_id: str) -> dict[str, Any]:
    while True:
        snapshot = await server.manager.wait(job_id, 60.0)
        assert snapshot is not None
        if snapshot["state"] in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED"):
            return snapshot


async def extra_single_image(request: web.Request) -> web.Response:
    from engine.server.app import read_json

    server = request.app[SERVER]
    body = await read_json(request)
    data = body.get("image")
    if not isinstance(data, str) or not data:
        raise RequestError("image needs a base64 image", "invalid_request", 422, "image")
    try:
        image = decode_base64_image(data)
    except ValueError as error:
        raise RequestError(f"image: {error}", "invalid_image", 422, "image") from None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    generation = GenerationRequest(
        prompt=_text(body, "prompt") or "high quality, detailed",
        width=image.width // 8 * 8,
        height=image.height // 8 * 8,
        steps=server.config.steps,
        seed=random.randint(0, MAX_SEED),
        n=1,
        operation=Operation.UPSCALE_SUBTLE,
        init_image=image,
        model=_model(server, server.a1111_model),
    )
    snapshot = await run_and_wait(server, generation, buffer.getvalue())
    if snapshot["state"] != "SUCCEEDED":
        failure = snapshot.get("error") or {}
        raise RequestError(
            failure.get("message") or "the upscale failed", failure.get("code") or "engine_error", 500
        )
    pngs = await result_images(server, snapshot)
    return web.json_response({"html_info": "", "image": base64.b64encode(pngs[0]).decode()})


# -- progress and control -------------------------------------------------------------------------------------


async def progress(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    ids: set[str] = request.app[A1111_JOBS]
    jobs = [server.manager.active[i] for i in ids if i in server.manager.active]
    running = sorted((j for j in jobs if j.state != "QUEUED"), key=lambda j: j.created)
    current = running[0] if running else None
    skip_image = request.query.get("skip_current_image", "false").lower() == "true"
    fraction = current.step / current.total if current is not None and current.total else 0.0
    eta = 0.0
    if current is not None and fraction > 0:
        elapsed = time.time() - current.state_since
        eta = elapsed / fraction - elapsed
    image = None
    if current is not None and current.preview is not None and not skip_image:
        image = base64.b64encode(current.preview).decode()
    return web.json_response(
        {
            "progress": round(fraction, 4),
            "eta_relative": round(eta, 3),
            "state": {
                "skipped": False,
                "interrupted": False,
                "stopping_generation": False,
                "job": current.id if current is not None else "",
                "job_count": len(jobs),
                "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(current.created))
                if current is not None
                else "0",
                "job_no": 0,
                "sampling_step": current.step if current is not None else 0,
                "sampling_steps": current.total if current is not None else 0,
            },
            "current_image": image,
            "textinfo": None,
            "current_task": current.id if current is not None else None,
        }
    )


async def interrupt(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    jobs: set[str] = request.app[A1111_JOBS]
    for job_id in list(jobs):
        await server.manager.cancel(job_id)
    return web.json_response(None)


# -- listings and options ------------------------------------------------------------------------------------


def _aliases(server: Server) -> list[str]:
    registry = getattr(server.engine, "registry", None)
    specs = getattr(registry, "specs", None)
    if isinstance(specs, dict) and len(specs) > 1:
        return sorted(str(alias) for alias in specs)
    return [server.config.model]


def _model(server: Server, name: Any) -> str | None:
    """A model alias for the job (None: the server's default). Unknown names are refused."""
    if name in (None, "", server.config.model):
        return None
    known = _aliases(server)
    if name not in known:
        raise RequestError(
            f"unknown model; one of {', '.join(known)}", "invalid_request", 422, "sd_model_checkpoint"
        )
    return str(name)


async def sd_models(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    return web.json_response(
        [
            {
                "title": alias,
                "model_name": alias,
                "hash": None,
                "sha256": None,
                "filename": alias,
                "config": None,
            }
            for alias in _aliases(server)
        ]
    )


async def samplers(request: web.Request) -> web.Response:
    return web.json_response([{"name": SAMPLER, "aliases": ["default"], "options": {}}])


async def schedulers(request: web.Request) -> web.Response:
    return web.json_response([{"name": "automatic", "label": "Automatic", "aliases": None}])


async def upscalers(request: web.Request) -> web.Response:
    none = {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1}
    ours = {
        "name": "imaginebot",
        "model_name": "upscale_subtle",
        "model_path": None,
        "model_url": None,
        "scale": 2,
    }
    return web.json_response([none, ours])


async def scripts(request: web.Request) -> web.Response:
    return web.json_response({"txt2img": [], "img2img": []})


async def get_options(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    return web.json_response(
        {
            "sd_model_checkpoint": server.a1111_model or server.config.model,
            "samples_format": "png",
            "live_previews_enable": True,
            "show_progress_every_n_steps": 1,
        }
    )


async def set_options(request: web.Request) -> web.Response:
    from engine.server.app import read_json

    server = request.app[SERVER]
    body = await read_json(request)
    if "sd_model_checkpoint" in body:
        server.a1111_model = _model(server, body["sd_model_checkpoint"])
    return web.json_response(True)


# -- field readers --------------------------------------------------------------------------------------------


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS or (required and not value.strip()):
        raise RequestError(
            f"must be {'a non-empty' if required else 'a'} string of at most {MAX_PROMPT_CHARS} characters",
            "invalid_request",
            422,
            name,
        )
    return value


def _whole(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"must be a whole number from {low} to {high}", "invalid_request", 422, name)
    return value


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"must be a number from {low:g} to {high:g}", "invalid_request", 422, name)
    return float(value)
