"""HTTP API of the engine server (aiohttp).

    POST   /images/jobs               JSON request → 202 {"id", "state"} at once (200 for an idempotent replay)
    GET    /images/jobs/{id}          {"id", "state", "progress", "step", "total", "error", "images": [links], ...}
    DELETE /images/jobs/{id}          cancel → the job's snapshot
    GET    /images/jobs/{id}/events   WebSocket: JSON events {"type": "state"|"progress", ...snapshot, "preview"}
                                      (base64 JPEG or null); the first is the current state, the socket closes
                                      after a terminal state
    GET    /images/{key}              a result PNG
    GET    /healthz                   200 {"status": "ok", "model", "slots", "queue"} once the model is loaded,
                                      else 503 {"status": "loading"|"failed"} (no token needed)
    GET    /metrics                   Prometheus text format

Every other route needs ``Authorization: Bearer <ENGINE_TOKEN>`` when a token is configured. Errors are
``{"error": {"code", "message"}}`` with a fitting status (400, 401, 404, 413, 503, 500). A job that ends
FAILED carries the same shape in its snapshot's ``error`` (codes in ``engine.server.jobs``; ``flagged``:
the safety checker, ``ENGINE_SAFETY_CHECKER``, refused the result).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from PIL import Image

from engine.base import MAX_SEED, MAX_STEPS, Engine, GenerationRequest, Operation
from engine.chaos import MAX_CHAOS
from engine.server.jobs import JobManager, ServerJob

log = logging.getLogger(__name__)

MANAGER = web.AppKey("manager", JobManager)
CONFIG = web.AppKey("config", dict)

MAX_PROMPT_CHARS = 8000
MAX_SIDE = 2048
MAX_N = 16
MAX_PROMPT_PARTS = 16
MAX_INIT_PIXELS = 4096 * 4096


class RequestError(Exception):
    def __init__(self, message: str, code: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    model_name: str = "",
    max_request_bytes: int = 32 * 2**20,
    max_jobs_kept: int = 1000,
    default_resolution: int = 512,
    default_steps: int = 25,
) -> web.Application:
    """The server application; the engine is started in the background when the app starts."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=max_request_bytes)
    app[MANAGER] = JobManager(engine, max_jobs_kept=max_jobs_kept)
    app[CONFIG] = {
        "token": token or None,
        "model": model_name,
        "resolution": default_resolution,
        "steps": default_steps,
        "status": "loading",
        "load_error": None,
        "engine": engine,
    }
    app.router.add_post("/images/jobs", submit)
    app.router.add_get("/images/jobs/{id}", get_job)
    app.router.add_delete("/images/jobs/{id}", cancel_job)
    app.router.add_get("/images/jobs/{id}/events", events)
    app.router.add_get("/images/{key}", get_image)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


# -- lifecycle ---------------------------------------------------------------------------------------


async def _on_startup(app: web.Application) -> None:
    app[CONFIG]["loader"] = asyncio.create_task(_load(app))


async def _load(app: web.Application) -> None:
    config, manager = app[CONFIG], app[MANAGER]
    try:
        await config["engine"].start()
    except Exception as error:  # EngineError or worse: reported by /healthz and on every job
        log.error("engine failed to start: %s", error)
        config["status"], config["load_error"] = "failed", str(error) or type(error).__name__
        manager.fail_all_queued(f"the model could not be loaded: {config['load_error']}")
        return
    config["status"] = "ok"
    manager.start()
    log.info("engine ready model=%s slots=%s", config["model"], getattr(config["engine"], "slots", 1))


async def _on_cleanup(app: web.Application) -> None:
    loader = app[CONFIG].get("loader")
    if loader is not None and not loader.done():
        loader.cancel()
        with contextlib.suppress(BaseException):
            await loader
    await app[MANAGER].stop()
    with contextlib.suppress(Exception):
        await app[CONFIG]["engine"].close()


# -- middlewares ---------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as error:
        return error_response(error.status, error.code, str(error))
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", "the request body is too large")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status, "http_error")
        return error_response(error.status, code, error.reason or "error")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[CONFIG]["token"]
    if token is None or request.path == "/healthz":
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        response = error_response(401, "unauthorized", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return await handler(request)


# -- handlers -------------------------------------------------------------------------------------------


async def submit(request: web.Request) -> web.Response:
    config, manager = request.app[CONFIG], request.app[MANAGER]
    if config["status"] == "failed":
        raise RequestError(
            f"the model could not be loaded: {config['load_error']}", "engine_unavailable", 503
        )
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise
    except Exception:
        raise RequestError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    generation = await parse_generation_request(body, config["resolution"], config["steps"])
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= 200:
        raise RequestError("Idempotency-Key must be 1 to 200 characters")
    job, created = manager.submit(generation, key)
    return web.json_response({"id": job.id, "state": str(job.state)}, status=202 if created else 200)


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_job(request).snapshot())


async def cancel_job(request: web.Request) -> web.Response:
    job = _job(request)
    request.app[MANAGER].cancel(job)
    return web.json_response(job.snapshot())


async def get_image(request: web.Request) -> web.Response:
    data = request.app[MANAGER].images.get(request.match_info["key"])
    if data is None:
        raise RequestError("no such image", "not_found", 404)
    return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "max-age=86400"})


async def events(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    manager = request.app[MANAGER]
    socket = web.WebSocketResponse(heartbeat=15)
    await socket.prepare(request)
    queue = manager.subscribe(job)
    reader = asyncio.ensure_future(_drain(socket))  # notices the client leaving
    try:
        await socket.send_json({"type": "state", **job.snapshot(), "preview": None})
        while not (job.state.terminal and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await socket.send_json(getter.result())
    except (ConnectionResetError, RuntimeError):
        pass
    finally:
        job.subscribers.discard(queue)
        reader.cancel()
        await socket.close()
    return socket


async def _drain(socket: web.WebSocketResponse) -> None:
    async for _ in socket:
        pass


async def healthz(request: web.Request) -> web.Response:
    config, manager = request.app[CONFIG], request.app[MANAGER]
    engine = config["engine"]
    body: dict[str, Any] = {
        "status": config["status"],
        "model": config["model"],
        "slots": int(getattr(engine, "slots", 1)),
        "queue": manager.queue_length,
        "running": manager.counts().get("PROCESSING", 0),
    }
    if config["status"] == "failed":
        body["error"] = config["load_error"]
    return web.json_response(body, status=200 if config["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    config, manager = request.app[CONFIG], request.app[MANAGER]
    lines = [
        "# HELP imaginebot_engine_ready 1 once the model is loaded.",
        "# TYPE imaginebot_engine_ready gauge",
        f"imaginebot_engine_ready {1 if config['status'] == 'ok' else 0}",
        "# HELP imaginebot_engine_queue_length Jobs waiting for an engine slot.",
        "# TYPE imaginebot_engine_queue_length gauge",
        f"imaginebot_engine_queue_length {manager.queue_length}",
        "# HELP imaginebot_engine_jobs Jobs the server remembers, by state.",
        "# TYPE imaginebot_engine_jobs gauge",
        *(f'imaginebot_engine_jobs{{state="{state}"}} {count}' for state, count in manager.counts().items()),
        "# HELP imaginebot_engine_images_total Images made.",
        "# TYPE imaginebot_engine_images_total counter",
        f"imaginebot_engine_images_total {manager.images_made}",
        "# HELP imaginebot_engine_step_seconds Mean wall time per reported denoising step.",
        "# TYPE imaginebot_engine_step_seconds gauge",
        f"imaginebot_engine_step_seconds {manager.step_seconds_total / max(1, manager.steps_done):.6f}",
        "# HELP imaginebot_engine_images_per_second Images per second of processing time.",
        "# TYPE imaginebot_engine_images_per_second gauge",
        f"imaginebot_engine_images_per_second {manager.images_made / manager.processing_seconds if manager.processing_seconds else 0:.6f}",
    ]
    lines += _gpu_memory_lines()
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


def _gpu_memory_lines() -> list[str]:
    import sys

    torch = sys.modules.get("torch")  # only when the engine imported it; never import torch here
    if torch is None or not torch.cuda.is_available():
        return []
    return [
        "# HELP imaginebot_engine_gpu_memory_bytes CUDA memory of this process.",
        "# TYPE imaginebot_engine_gpu_memory_bytes gauge",
        f'imaginebot_engine_gpu_memory_bytes{{kind="allocated"}} {torch.cuda.memory_allocated()}',
        f'imaginebot_engine_gpu_memory_bytes{{kind="reserved"}} {torch.cuda.memory_reserved()}',
        f'imaginebot_engine_gpu_memory_bytes{{kind="max_allocated"}} {torch.cuda.max_memory_allocated()}',
    ]


def _job(request: web.Request) -> ServerJob:
    job = request.app[MANAGER].get(request.match_info["id"])
    if job is None:
        raise RequestError("no such job", "not_found", 404)
    return job


# -- request parsing ------------------------------------------------------------------------------------


async def parse_generation_request(body: dict[str, Any], resolution: int, steps: int) -> GenerationRequest:
    """Validate the JSON body into a ``GenerationRequest`` (unknown keys are ignored)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt is required")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    negative = body.get("negative_prompt") or ""
    if not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS:
        raise RequestError(f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    try:
        operation = Operation(body.get("operation") or "txt2img")
    except ValueError:
        raise RequestError(f"unknown operation; one of {', '.join(o.value for o in Operation)}") from None
    width = _int(body, "width", resolution, 8, MAX_SIDE)
    height = _int(body, "height", resolution, 8, MAX_SIDE)
    if width % 8 or height % 8:
        raise RequestError("width and height must be multiples of 8")
    seed = body.get("seed")
    seed = random.randint(0, MAX_SEED) if seed is None else _int(body, "seed", 0, 0, MAX_SEED)
    guidance = body.get("guidance", 7.0)
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= 30:
        raise RequestError("guidance must be a number from 0 to 30")
    strength = body.get("strength", 0.6)
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
        raise RequestError("strength must be a number in (0, 1]")
    stop = body.get("stop", 1.0)
    if isinstance(stop, bool) or not isinstance(stop, int | float) or not 0.1 <= stop <= 1:
        raise RequestError("stop must be a number from 0.1 to 1")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > 64):
        raise RequestError("model must be a model alias")
    init_image = None
    if body.get("init_image") is not None:
        init_image = await asyncio.to_thread(decode_image, body["init_image"])
    if operation.needs_image and init_image is None:
        raise RequestError(f"{operation.value} needs init_image (base64)")
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=_int(body, "steps", steps, 1, MAX_STEPS),
        seed=seed,
        n=_int(body, "n", 1, 1, MAX_N),
        guidance=float(guidance),
        operation=operation,
        init_image=init_image,
        strength=float(strength),
        model=model,
        tile=bool(body.get("tile", False)),
        stop=float(stop),
        chaos=_int(body, "chaos", 0, 0, MAX_CHAOS),
        prompt_parts=_prompt_parts(body.get("prompt_parts")),
    )


def _prompt_parts(value: Any) -> tuple[tuple[str, float], ...]:
    """``[[text, weight], ...]``: at most ``MAX_PROMPT_PARTS``, weights in ±100 summing to more than 0."""
    if value is None or value == []:
        return ()
    problem = RequestError(
        f"prompt_parts must be a list of at most {MAX_PROMPT_PARTS} [text, weight] pairs, "
        "weights from -100 to 100 with a positive total"
    )
    if not isinstance(value, list) or len(value) > MAX_PROMPT_PARTS:
        raise problem
    parts = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise problem
        text, weight = item
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_CHARS:
            raise problem
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not -100 <= weight <= 100:
            raise problem
        parts.append((text, float(weight)))
    if sum(weight for _, weight in parts) <= 0:
        raise problem
    return tuple(parts)


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be a whole number from {low} to {high}")
    return value


def decode_image(data: Any) -> Image.Image:
    """Raw base64 or a ``data:image/...;base64,`` URL → an RGB image, refusing bombs and non-images."""
    if not isinstance(data, str):
        raise RequestError("init_image must be a base64 string", "invalid_image")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("init_image is not valid base64", "invalid_image") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_INIT_PIXELS:
            raise RequestError("init_image is too large (at most 16 megapixels)", "invalid_image")
        image.load()
        return image.convert("RGB")
    except RequestError:
        raise
    except Exception:
        raise RequestError("init_image is not a readable image", "invalid_image") from None
