"""A fake AUTOMATIC1111 ``--api`` server (aiohttp) for the routes the adapter and ``webuiapi`` use.

It behaves like the real one where it matters: one global queue lock (a second POST waits for the first),
global ``/sdapi/v1/progress`` (``current_image`` every ``preview_every`` steps) and ``/sdapi/v1/interrupt``
(stops whatever runs and answers with what it has), ``/internal/progress`` by ``force_task_id``,
img2img running ``int(steps * denoising_strength)`` steps, seeds ``seed + i`` across a batch, unknown keys
ignored, init images as raw base64 or data URLs, ``--api-auth`` Basic auth (401), and A1111's error shapes:
FastAPI 422 ``{"detail": [...]}``, 404 ``{"detail": "Sampler not found"}``, 500 ``{"error", "detail", "body",
"errors"}`` (``fail_next`` injects one, e.g. ``OutOfMemoryError``).

Tests hold a job at a step with ``pause_at`` (the job waits on ``resume()``; ``paused`` is set when it does),
so nothing depends on timing. ``python -m tests.fakes.a1111 --port 0`` runs it as its own process and prints
``listening on http://…``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.pixels import b64, fake_image

SAMPLERS = ["DPM++ 2M", "Euler a", "Euler", "DDIM"]
MODELS = [
    {
        "title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "model_name": "v1-5-pruned-emaonly",
        "hash": "6ce0161689",
        "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        "filename": "/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
        "config": None,
    },
    {
        "title": "sd_xl_base_1.0.safetensors [31e35c80fc]",
        "model_name": "sd_xl_base_1.0",
        "hash": "31e35c80fc",
        "sha256": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6ffb4f4f62f6e",
        "filename": "/models/Stable-diffusion/sd_xl_base_1.0.safetensors",
        "config": None,
    },
]
UPSCALERS = {"None": None, "Lanczos": None, "Nearest": None, "R-ESRGAN 4x+": "RealESRGAN_x4plus"}
INT_FIELDS = ("steps", "width", "height", "batch_size", "n_iter", "seed")


@dataclass
class FakeA1111:
    step_delay: float = 0.0
    preview_every: int = 2
    auth: tuple[str, str] | None = None
    pause_at: int | None = None  # the next job waits at this step until resume()
    fail_next: tuple[int, dict[str, Any]] | None = None  # (status, body) answered to the next generation
    broken_images: bool = False  # answer with base64 that is not an image
    task_progress: bool = True  # False: no /internal/progress (older servers, some forks) -> 404
    # observed by tests
    requests: list[dict[str, Any]] = field(default_factory=list)
    interrupts: int = 0
    options: dict[str, Any] = field(default_factory=lambda: {"sd_model_checkpoint": MODELS[0]["title"]})
    checkpoints_used: list[str] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)  # extra-single-image requests
    finished: list[dict[str, Any]] = field(default_factory=list)  # {task, steps, interrupted} per job
    durations: list[float] = field(default_factory=list)  # seconds each generation ran (for bench/)

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._state = _idle_state()
        self._current_image: str | None = None
        self._interrupt = False
        self._tasks: dict[str, str] = {}  # force_task_id -> queued/active/completed
        self.paused = asyncio.Event()
        self.queued = asyncio.Event()  # a request waits for the queue lock
        self.task_queried = asyncio.Event()  # someone asked /internal/progress
        self.interrupted = asyncio.Event()  # someone posted /sdapi/v1/interrupt
        self.progress_seen = asyncio.Event()  # progress was read while a job had made a step
        self._resume = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    # -- control --------------------------------------------------------------------------------------

    def resume(self) -> None:
        self._resume.set()

    async def start(self, port: int = 0) -> str:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=64 * 1024**2)
        app.add_routes(
            [
                web.get("/sdapi/v1/samplers", self.samplers),
                web.get("/sdapi/v1/sd-models", self.sd_models),
                web.get("/sdapi/v1/upscalers", self.upscalers),
                web.get("/sdapi/v1/scripts", self.scripts),
                web.get("/sdapi/v1/options", self.get_options),
                web.post("/sdapi/v1/options", self.set_options),
                web.get("/sdapi/v1/progress", self.progress),
                web.post("/sdapi/v1/interrupt", self.interrupt),
                web.post("/sdapi/v1/extra-single-image", self.extra_single_image),
                web.post("/sdapi/v1/txt2img", self.txt2img),
                web.post("/sdapi/v1/img2img", self.img2img),
                web.post("/internal/progress", self.internal_progress),
                web.get("/_fake/durations", self.get_durations),
            ]
        )
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middleware ------------------------------------------------------------------------------------

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.json_response(
                    {"detail": "Incorrect username or password"},
                    status=401,
                    headers={"WWW-Authenticate": "Basic"},
                )
        return await handler(request)

    # -- read-only routes ------------------------------------------------------------------------------

    async def samplers(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": n, "aliases": [n.lower()], "options": {}} for n in SAMPLERS])

    async def sd_models(self, request: web.Request) -> web.Response:
        return web.json_response(MODELS)

    async def upscalers(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"name": name, "model_name": model, "model_path": None, "model_url": None, "scale": 4}
                for name, model in UPSCALERS.items()
            ]
        )

    async def extra_single_image(self, request: web.Request) -> web.Response:
        body = await request.json()
        image = _decode(body.get("image"))
        if image is None:
            return _error(500, "UnidentifiedImageError", "cannot identify image file")
        name = body.get("upscaler_1", "None")
        if name not in UPSCALERS:
            return web.json_response(
                {"detail": f"Invalid upscaler, needs to be one of these: {', '.join(UPSCALERS)}"}, status=400
            )
        self.extras.append(body)
        factor = float(body.get("upscaling_resize", 2))
        size = (round(image.width * factor), round(image.height * factor))
        upscaled = image.convert("RGB").resize(size, Image.Resampling.NEAREST)  # recognisably not Lanczos
        return web.json_response({"html_info": "<p></p>", "image": b64(upscaled)})

    async def scripts(self, request: web.Request) -> web.Response:
        return web.json_response({"txt2img": [], "img2img": []})

    async def get_options(self, request: web.Request) -> web.Response:
        return web.json_response(self.options)

    async def set_options(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "sd_model_checkpoint" in body and body["sd_model_checkpoint"] not in [m["title"] for m in MODELS]:
            return _error(500, "RuntimeError", f"model {body['sd_model_checkpoint']!r} not found")
        self.options.update(body)
        return web.json_response(None)

    async def progress(self, request: web.Request) -> web.Response:
        state = dict(self._state)
        steps = max(1, state["sampling_steps"])
        fraction = state["sampling_step"] / steps if state["job_count"] > 0 else 0.0
        skip = request.query.get("skip_current_image", "false").lower() == "true"
        if state["sampling_step"] > 0 and not skip:
            self.progress_seen.set()
        return web.json_response(
            {
                "progress": fraction,
                "eta_relative": (1 - fraction) * steps * self.step_delay,
                "state": state,
                "current_image": None if skip else self._current_image,
                "textinfo": None,
            }
        )

    async def get_durations(self, request: web.Request) -> web.Response:
        """Not an A1111 route: the bench reads the backend's own generation time here."""
        return web.json_response(self.durations)

    async def internal_progress(self, request: web.Request) -> web.Response:
        self.task_queried.set()
        if not self.task_progress:
            return web.json_response({"detail": "Not Found"}, status=404)
        body = await request.json()
        status = self._tasks.get(str(body.get("id_task")))
        return web.json_response(
            {
                "active": status == "active",
                "queued": status == "queued",
                "completed": status == "completed",
                "progress": None,
                "eta": None,
                "live_preview": None,
                "id_live_preview": -1,
                "textinfo": "Waiting..." if status == "queued" else None,
            }
        )

    async def interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        self.interrupted.set()
        if self._state["job_count"] > 0:
            self._interrupt = True
            self._state["interrupted"] = True
        return web.json_response({})

    # -- generation ------------------------------------------------------------------------------------

    async def txt2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, img2img=False)

    async def img2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, img2img=True)

    async def _generate(self, request: web.Request, *, img2img: bool) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError as error:
            return _unprocessable(["body", error.pos], "Expecting value", "value_error.jsondecode")
        invalid = _validate(body)
        if invalid is not None:
            return invalid
        sampler = body.get("sampler_name") or body.get("sampler_index") or "Euler"
        if sampler not in SAMPLERS:
            return web.json_response({"detail": "Sampler not found"}, status=404)
        init = mask = None
        if img2img:
            images = body.get("init_images") or []
            if not images:
                return _error(500, "IndexError", "list index out of range")
            init = _decode(images[0])
            mask = _decode(body["mask"]) if body.get("mask") else None
            if init is None or (body.get("mask") and mask is None):
                return _error(500, "UnidentifiedImageError", "cannot identify image file")
        task_id = str(body.get("force_task_id") or f"task({random.getrandbits(32):x})")
        self.requests.append(body)
        self._tasks[task_id] = "queued"
        if self._lock.locked():
            self.queued.set()
        async with self._lock:  # A1111's queue_lock: one generation at a time
            self._tasks[task_id] = "active"
            started = time.perf_counter()
            try:
                return await self._run(task_id, body, init, mask)
            finally:
                self.durations.append(time.perf_counter() - started)
                self._tasks[task_id] = "completed"
                self._state, self._current_image, self._interrupt = _idle_state(), None, False

    async def _run(
        self, task_id: str, body: dict[str, Any], init: Image.Image | None, mask: Image.Image | None
    ) -> web.Response:
        checkpoint = (body.get("override_settings") or {}).get("sd_model_checkpoint") or self.options[
            "sd_model_checkpoint"
        ]
        if checkpoint not in [m["title"] for m in MODELS]:
            return _error(500, "RuntimeError", f"checkpoint {checkpoint!r} not found")
        self.checkpoints_used.append(checkpoint)
        if self.fail_next is not None:
            status, error_body = self.fail_next
            self.fail_next = None
            return web.json_response(error_body, status=status)
        steps = int(body.get("steps", 20))
        strength = float(body.get("denoising_strength", 0.75)) if init is not None else 1.0
        if init is not None:
            steps = max(1, min(steps, int(steps * strength)))
        seed = int(body.get("seed", -1))
        if seed == -1:
            seed = random.randint(0, 2**32 - 1)
        n = int(body.get("batch_size", 1)) * int(body.get("n_iter", 1))
        width, height = int(body.get("width", 512)), int(body.get("height", 512))
        prompt = str(body.get("prompt", ""))
        self._state.update(
            job="scripts_img2img" if init is not None else "scripts_txt2img",
            job_count=1,
            job_timestamp=time.strftime("%Y%m%d%H%M%S"),
            sampling_steps=steps,
        )
        done = 0
        for step in range(1, steps + 1):
            if self._interrupt:
                break
            if self.pause_at is not None and step == self.pause_at:
                self.pause_at = None
                self.paused.set()
                await self._resume.wait()
                self._resume.clear()
                if self._interrupt:
                    break
            await asyncio.sleep(self.step_delay)
            self._state["sampling_step"] = done = step
            if step % self.preview_every == 0:
                self._current_image = b64(fake_image(prompt, seed, 64, 64), "PNG")
        self.finished.append({"task": task_id, "steps": done, "interrupted": self._interrupt})
        seeds = [seed + i for i in range(n)]
        images = [
            "not-an-image" if self.broken_images else b64(
                fake_image(prompt, s, width, height, init=init, strength=strength, mask=mask)
            )
            for s in seeds
        ]  # fmt: skip
        info = {
            "prompt": prompt,
            "all_prompts": [prompt] * n,
            "seed": seed,
            "all_seeds": seeds,
            "subseed": -1,
            "width": width,
            "height": height,
            "sampler_name": body.get("sampler_name"),
            "cfg_scale": body.get("cfg_scale", 7.0),
            "steps": steps,
            "batch_size": n,
            "index_of_first_image": 0,
            "infotexts": [f"{prompt}\nSteps: {steps}, Seed: {s}" for s in seeds],
            "sd_model_name": checkpoint.split(".")[0],
        }
        return web.json_response({"images": images, "parameters": body, "info": json.dumps(info)})


def _idle_state() -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }


def _validate(body: Any) -> web.Response | None:
    if not isinstance(body, dict):
        return _unprocessable(["body"], "value is not a valid dict", "type_error.dict")
    for name in INT_FIELDS:
        if name in body and (isinstance(body[name], bool) or not isinstance(body[name], int)):
            return _unprocessable(["body", name], "value is not a valid integer", "type_error.integer")
    for name in ("prompt", "negative_prompt"):
        if name in body and not isinstance(body[name], str):
            return _unprocessable(["body", name], "str type expected", "type_error.str")
    return None


def _unprocessable(loc: list[Any], msg: str, kind: str) -> web.Response:
    return web.json_response({"detail": [{"loc": loc, "msg": msg, "type": kind}]}, status=422)


def _error(status: int, kind: str, text: str) -> web.Response:
    """A1111's exception handler shape."""
    return web.json_response({"error": kind, "detail": "", "body": "", "errors": text}, status=status)


def _decode(text: Any) -> Image.Image | None:
    if not isinstance(text, str):
        return None
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError):
        return None
    return image


async def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.05)
    parser.add_argument("--auth", default=None, help="user:password")
    args = parser.parse_args()
    user, _, password = (args.auth or "").partition(":")
    fake = FakeA1111(step_delay=args.step_delay, auth=(user, password) if args.auth else None)
    url = await fake.start(args.port)
    print(f"listening on {url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
