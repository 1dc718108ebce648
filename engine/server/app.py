"""HTTP API of the engine server (aiohttp): our job API, plus A1111's and OpenAI's (``engine.server.a1111``,
``engine.server.openai_images``), on one port with one token.

    POST   /images/jobs[?wait=S]      JSON ``engine.wire.JobRequest`` → 202 {"id", "state"} at once (200 for an
                                      idempotent replay); with ``wait`` (≤ 120 s) the finished job (200) when
                                      it finishes in time, else the job as it stands (202)
    GET    /images/jobs/{id}          ``engine.wire.JobSnapshot``
    DELETE /images/jobs/{id}          cancel → the job's snapshot
    GET    /images/jobs/{id}/events   WebSocket: JSON ``JobEvent``s (``preview``: base64 JPEG or null); the first is
                                      the current state, the socket closes after a terminal state
    GET    /images/{key}              a result PNG (bearer token, or a signed link's ``expires`` + ``signature``)
    GET    /healthz                   200 once the model is loaded, else 503. Without the token only
                                      {"status": "ok"|"loading"|"failed"}; with it also model, slots, queue.
    GET    /metrics                   Prometheus text format (prometheus-client)

Every other route needs the token (``ENGINE_TOKEN``) when one is configured: ``Authorization: Bearer <token>``,
or HTTP Basic with the token as password (any user name), as A1111 clients send it. Browsers are kept out
even from a token-less loopback server: a request whose ``Origin`` is not this server is refused (403),
and JSON routes accept only ``Content-Type: application/json`` (415), so a web page cannot send a
"simple" cross-origin POST. Errors are ``{"error": {"code", "message", "field"?}}``: 400 (unreadable body),
401, 403, 404, 413, 415, 422 (a field is wrong: ``field`` names it), 503, 500.
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
from pydantic import ValidationError
from yarl import URL

from engine.base import MAX_SEED, Engine, GenerationRequest
from engine.server.context import (
    SERVER,
    RequestError,
    Server,
    ServerConfig,
    error_response,
    public_model_name,
)
from engine.server.jobs import Limits
from engine.server.webhooks import WebhookRefused
from engine.wire import MAX_WAIT_SECONDS, JobRequest, decode_base64_image, validation_problem

log = logging.getLogger(__name__)

JSON_ROUTES = ("/images/jobs", "/sdapi/v1/", "/v1/images/generations")
"""POSTs here must be ``application/json`` (what a page cannot send cross-origin without CORS)."""


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    model_name: str = "",
    max_request_bytes: int = 32 * 2**20,
    max_jobs_kept: int = 1000,
    default_resolution: int = 512,
    default_steps: int = 25,
    database_url: str | None = None,
    results_ttl: float = 86400.0,
    limits: Limits | None = None,
    webhook_secret: str | None = None,
    webhook_allow_private: bool = False,
    webhook_first_delay: float = 1.0,
) -> web.Application:
    """The server application; the job store opens and the engine starts in the background on startup.

    ``database_url`` defaults to an in-memory SQLite database (tests); ``python -m engine serve`` passes
    a file in ``ENGINE_DATA_DIR`` or ``ENGINE_DATABASE_URL``.
    """
    from engine.server import a1111, openai_images

    config = ServerConfig(
        token=token or None,
        model=public_model_name(model_name),
        resolution=default_resolution,
        steps=default_steps,
        database_url=database_url or "sqlite+aiosqlite:///:memory:",
        results_ttl=results_ttl,
        keep_finished=max_jobs_kept,
        limits=limits or Limits(),
        webhook_secret=webhook_secret or None,
        webhook_allow_private=webhook_allow_private,
        webhook_first_delay=webhook_first_delay,
    )
    app = web.Application(middlewares=[_errors, _browsers, _auth], client_max_size=max_request_bytes)
    app[SERVER] = Server(engine, config)
    app.router.add_post("/images/jobs", submit)
    app.router.add_get("/images/jobs/{id}", get_job)
    app.router.add_delete("/images/jobs/{id}", cancel_job)
    app.router.add_get("/images/jobs/{id}/events", events)
    app.router.add_get("/images/{key}", get_image)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    a1111.add_routes(app)
    openai_images.add_routes(app)
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


# -- lifecycle ---------------------------------------------------------------------------------------


async def _on_startup(app: web.Application) -> None:
    server = app[SERVER]
    await server.open()
    server.loader = asyncio.create_task(_load(server))


async def _load(server: Server) -> None:
    try:
        await server.engine.start()
    except Exception as error:  # EngineError or worse: the log has the reason, users the model's name
        log.error("engine failed to start: %s", error)
        server.status, server.load_error = "failed", str(error) or type(error).__name__
        refusal = server.unavailable()
        await server.manager.fail_all_queued(str(refusal))
        return
    server.status = "ok"
    server.manager.start()
    log.info("engine ready model=%s slots=%s", server.config.model, getattr(server.engine, "slots", 1))


async def _on_cleanup(app: web.Application) -> None:
    server = app[SERVER]
    loader = server.loader
    if loader is not None and not loader.done():
        loader.cancel()
        with contextlib.suppress(BaseException):
            await loader
    await server.close()
    with contextlib.suppress(Exception):
        await server.engine.close()


# -- middlewares ---------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    openai = request.path.startswith("/v1/")
    try:
        return await handler(request)
    except RequestError as error:
        if openai:
            from engine.server.openai_images import openai_error

            return openai_error(error.status, str(error), error.code, error.field)
        return error_response(error.status, error.code, str(error), error.field)
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
async def _browsers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No cross-origin requests from web pages, and JSON routes only with a JSON content type."""
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin, request):
        raise RequestError("cross-origin requests are not allowed", "forbidden_origin", 403)
    if (
        request.method == "POST"
        and request.path.startswith(JSON_ROUTES)
        and request.content_type != "application/json"
        and request.path != "/sdapi/v1/interrupt"
        and request.path != "/sdapi/v1/skip"
    ):
        raise RequestError(
            "the body must be JSON (Content-Type: application/json)", "unsupported_media_type", 415
        )
    return await handler(request)


def _same_origin(origin: str, request: web.Request) -> bool:
    try:
        url = URL(origin)
    except ValueError:
        return False
    if url.scheme not in ("http", "https") or url.host is None:
        return False
    return f"{url.host}:{url.port}" == f"{request.url.host}:{request.url.port}"


def authorized(request: web.Request) -> bool:
    """The token as a bearer token, or as the password of HTTP Basic (any user name); True without one."""
    token = request.app[SERVER].config.token
    if token is None:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), token.encode())


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz" or authorized(request):
        return await handler(request)
    if request.method == "GET" and request.path.startswith("/images/") and "signature" in request.query:
        return await handler(request)  # a signed link: get_image checks the signature
    if request.path.startswith("/v1/"):
        from engine.server.openai_images import openai_error

        return openai_error(
            401, "Incorrect API key provided.", "invalid_api_key", None, "authentication_error"
        )
    response = error_response(401, "unauthorized", "a valid token is required (Bearer, or Basic password)")
    response.headers["WWW-Authenticate"] = 'Basic realm="imaginebot engine", charset="UTF-8"'
    return response


# -- handlers -------------------------------------------------------------------------------------------


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise
    except Exception:
        raise RequestError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


async def submit(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    refusal = server.unavailable()
    if refusal is not None:
        raise refusal
    wait = _wait_seconds(request)
    body = await read_json(request)
    spec = parse_job_request(body)
    generation, init_png = await to_generation(spec, server.config.resolution, server.config.steps)
    if spec.callback_url is not None:
        try:
            await server.webhooks.check(spec.callback_url)
        except WebhookRefused as error:
            raise RequestError(str(error), "invalid_request", 422, "callback_url") from None
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= 200:
        raise RequestError("must be 1 to 200 characters", "invalid_request", 422, "Idempotency-Key")
    snapshot, created = await server.manager.submit(
        generation, idempotency_key=key, init_png=init_png, spec=spec, use_cache=spec.cache
    )
    if wait:
        snapshot = await server.manager.wait(snapshot["id"], wait) or snapshot
        finished = snapshot["state"] in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")
        return web.json_response(snapshot, status=200 if finished else 202)
    return web.json_response(
        {"id": snapshot["id"], "state": snapshot["state"]}, status=202 if created else 200
    )


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise RequestError(
            f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS}", "invalid_request", 422, "wait"
        )
    return wait


def parse_job_request(body: dict[str, Any]) -> JobRequest:
    try:
        return JobRequest.model_validate(body)
    except ValidationError as error:
        field, reason = validation_problem(error)
        raise RequestError(f"{field}: {reason}", "invalid_request", 422, field) from None


async def to_generation(
    spec: JobRequest, resolution: int, steps: int
) -> tuple[GenerationRequest, bytes | None]:
    """The engine's request for a validated wire request, and the input image as PNG (for the job row)."""
    init_image = None
    init_png = None
    if spec.init_image is not None:
        try:
            init_image = await asyncio.to_thread(decode_base64_image, spec.init_image)
        except ValueError as error:
            raise RequestError(f"init_image: {error}", "invalid_image", 422, "init_image") from None
        init_png = await asyncio.to_thread(_png, init_image)
    generation = GenerationRequest(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        width=spec.width or resolution,
        height=spec.height or resolution,
        steps=spec.steps or steps,
        seed=random.randint(0, MAX_SEED) if spec.seed is None else spec.seed,
        n=spec.n,
        guidance=spec.guidance,
        operation=spec.operation,
        init_image=init_image,
        strength=spec.strength,
        model=spec.model,
        tile=spec.tile,
        stop=spec.stop,
        chaos=spec.chaos,
        prompt_parts=tuple(spec.prompt_parts),
    )
    return generation, init_png


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def get_job(request: web.Request) -> web.Response:
    snapshot = await request.app[SERVER].manager.snapshot(request.match_info["id"])
    if snapshot is None:
        raise RequestError("no such job", "not_found", 404)
    return web.json_response(snapshot)


async def cancel_job(request: web.Request) -> web.Response:
    snapshot = await request.app[SERVER].manager.cancel(request.match_info["id"])
    if snapshot is None:
        raise RequestError("no such job", "not_found", 404)
    return web.json_response(snapshot)


async def get_image(request: web.Request) -> web.Response:
    server, key = request.app[SERVER], request.match_info["key"]
    if not authorized(request) and not server.signature_valid(
        key, request.query.get("expires", ""), request.query.get("signature", "")
    ):
        raise RequestError("the link is invalid or has expired", "unauthorized", 401)
    data = await server.manager.image(key)
    if data is None:
        raise RequestError("no such image", "not_found", 404)
    return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "max-age=86400"})


async def events(request: web.Request) -> web.StreamResponse:
    manager = request.app[SERVER].manager
    job_id = request.match_info["id"]
    snapshot = await manager.snapshot(job_id)
    if snapshot is None:
        raise RequestError("no such job", "not_found", 404)
    socket = web.WebSocketResponse(heartbeat=15)
    await socket.prepare(request)
    job = manager.active.get(job_id)
    if job is None:  # finished: its state, then goodbye
        await socket.send_json({"type": "state", **snapshot, "preview": None})
        await socket.close()
        return socket
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
    server = request.app[SERVER]
    status = 200 if server.status == "ok" else 503
    if not authorized(request):
        return web.json_response({"status": server.status}, status=status)
    manager = server.manager
    body: dict[str, Any] = {
        "status": server.status,
        "model": server.config.model,
        "slots": int(getattr(server.engine, "slots", 1)),
        "queue": manager.queue_length,
        "running": len(manager.running()),
    }
    return web.json_response(body, status=status)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
