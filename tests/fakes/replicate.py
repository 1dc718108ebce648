"""A fake Replicate-style predictions API (aiohttp) for the routes the adapter and the ``replicate`` client use.

Like the real one: Bearer (or ``Token``) auth (401 problem details otherwise); ``POST /v1/predictions
{"version", "input"}`` and ``POST /v1/models/{owner}/{name}/predictions {"input"}`` answer 201 with a
prediction (``id``, ``status`` ``starting``, ``urls.get``/``urls.cancel``); the prediction moves to
``processing`` and prints a tqdm bar into ``logs`` step by step, then ``succeeded`` with ``output`` as a list
of URLs served by ``/files/{name}`` (or ``failed`` with ``error``; ``canceled`` after ``POST …/cancel``);
input validation answers 422 with ``invalid_fields``; unknown models/versions 404 ``{"detail": "Not found."}``.

``pause_at`` holds a prediction at a step until ``resume()``; ``output_base`` lets a test point output
URLs elsewhere (a private address, to check the SSRF guard). ``python -m tests.fakes.replicate`` runs it
as its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.pixels import encode, fake_image

MODEL = "stability-ai/sdxl"
VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"
SCHEMA = {
    "prompt": str,
    "negative_prompt": str,
    "width": int,
    "height": int,
    "num_inference_steps": int,
    "guidance_scale": float,
    "seed": int,
    "num_outputs": int,
    "image": str,
    "mask": str,
    "prompt_strength": float,
}


@dataclass
class FakeReplicate:
    token: str = "r8_test"
    step_delay: float = 0.0
    pause_at: int | None = None
    pause_prompt: str | None = None  # pause only the prediction with this prompt
    fail_next: str | None = None  # the error text of the next prediction
    output_base: str | None = None
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # seconds each prediction ran (for bench/)

    def __post_init__(self) -> None:
        self.paused = asyncio.Event()
        self.progress_seen = asyncio.Event()  # a prediction with a progress bar in its logs was read
        self._resume = asyncio.Event()
        self.files: dict[str, bytes] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def resume(self) -> None:
        self._resume.set()

    async def start(self, port: int = 0) -> str:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024**2)
        app.add_routes(
            [
                web.post("/v1/predictions", self.create),
                web.post("/v1/models/{owner}/{name}/predictions", self.create),
                web.get("/v1/models/{owner}/{name}", self.get_model),
                web.get("/v1/models/{owner}/{name}/versions/{version}", self.get_version),
                web.get("/v1/predictions/{id}", self.get_prediction),
                web.post("/v1/predictions/{id}/cancel", self.cancel),
                web.get("/files/{name}", self.file),
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
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/files/", "/_fake/")):
            return await handler(request)  # delivery URLs are signed, not token-protected
        header = request.headers.get("Authorization", "")
        if header not in (f"Bearer {self.token}", f"Token {self.token}"):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return await handler(request)

    # -- routes ----------------------------------------------------------------------------------------

    async def get_durations(self, request: web.Request) -> web.Response:
        """Not a Replicate route: the bench reads the backend's own generation time here."""
        return web.json_response(self.durations)

    async def get_model(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model != MODEL:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        owner, name = model.split("/")
        return web.json_response(
            {
                "url": f"https://replicate.com/{model}",
                "owner": owner,
                "name": name,
                "description": "A fake SDXL",
                "visibility": "public",
                "latest_version": {"id": VERSION, "created_at": "2023-01-01T00:00:00Z", "openapi_schema": {}},
            }
        )

    async def get_version(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model != MODEL or request.match_info["version"] != VERSION:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        return web.json_response(
            {
                "id": VERSION,
                "created_at": "2023-01-01T00:00:00Z",
                "cog_version": "0.9.0",
                "openapi_schema": {},
            }
        )

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "owner" in request.match_info:
            model = f"{request.match_info['owner']}/{request.match_info['name']}"
            if model != MODEL:
                return web.json_response({"detail": "Not found.", "status": 404}, status=404)
            version = VERSION
        else:
            version = str(body.get("version", "")).split(":")[-1]
            if version != VERSION:
                return _problem(
                    422,
                    "Invalid version or not permitted",
                    "The specified version does not exist (or perhaps you don't have permission to use it?)",
                )
        values = body.get("input")
        if not isinstance(values, dict):
            return _problem(422, "Input validation failed", "- input: Invalid type. Expected: object")
        for key, value in values.items():
            kind = SCHEMA.get(key)
            ok = (
                kind is None
                or (isinstance(value, kind) or (kind is float and isinstance(value, int)))
                and not isinstance(value, bool)
            )
            if not ok:
                description = (
                    f"Invalid type. Expected: {kind.__name__ if kind else '?'}, given: {type(value).__name__}"
                )
                return web.json_response(
                    {
                        "title": "Input validation failed",
                        "detail": f"- input.{key}: {description}",
                        "status": 422,
                        "invalid_fields": [
                            {"type": "invalid_type", "field": f"input.{key}", "description": description}
                        ],
                    },
                    status=422,
                )
        if "prompt" not in values:
            return _problem(422, "Input validation failed", "- input: prompt is required")
        self.inputs.append(values)
        prediction_id = uuid.uuid4().hex[:26]
        prediction = {
            "id": prediction_id,
            "model": MODEL,
            "version": version,
            "input": values,
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": _now(),
            "started_at": None,
            "completed_at": None,
            "metrics": {},
            "urls": {
                "get": f"{self.url}/v1/predictions/{prediction_id}",
                "cancel": f"{self.url}/v1/predictions/{prediction_id}/cancel",
                "web": f"https://replicate.com/p/{prediction_id}",
            },
        }
        self.predictions[prediction_id] = prediction
        task = asyncio.create_task(self._run(prediction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(prediction, status=201)

    async def get_prediction(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        if "%|" in prediction["logs"]:
            self.progress_seen.set()
        return web.json_response(prediction)

    async def cancel(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        self.cancels.append(prediction["id"])
        if prediction["status"] not in ("succeeded", "failed", "canceled"):
            prediction["status"] = "canceled"
            prediction["completed_at"] = _now()
        return web.json_response(prediction)

    async def file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    # -- the prediction's life -------------------------------------------------------------------------

    async def _run(self, prediction: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            await self._predict(prediction)
        finally:
            self.durations.append(time.perf_counter() - started)

    async def _predict(self, prediction: dict[str, Any]) -> None:
        values = prediction["input"]
        await asyncio.sleep(self.step_delay)  # "starting": booting the model
        if prediction["status"] == "canceled":
            return
        prediction.update(
            status="processing", started_at=_now(), logs=f"Using seed: {values.get('seed', 0)}\n"
        )
        steps = int(values.get("num_inference_steps", 25))
        init = _image(values.get("image"))
        strength = float(values.get("prompt_strength", 0.8)) if init is not None else 1.0
        if init is not None:
            steps = max(1, int(steps * strength))
        for step in range(1, steps + 1):
            if step == self.pause_at and self.pause_prompt in (None, values.get("prompt")):
                self.pause_at = None
                self.paused.set()
                await self._resume.wait()
                self._resume.clear()
            if prediction["status"] == "canceled":
                return
            await asyncio.sleep(self.step_delay)
            percent = 100 * step // steps
            bar = "█" * (percent // 10)
            prediction["logs"] += f"\r{percent:3d}%|{bar:<10}| {step}/{steps} [00:00<00:00, 10.00it/s]"
        prediction["logs"] += "\n"
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            prediction.update(status="failed", error=error, completed_at=_now())
            return
        seed, n = int(values.get("seed", 0)), int(values.get("num_outputs", 1))
        width, height = int(values.get("width", 1024)), int(values.get("height", 1024))
        mask = _image(values.get("mask"))
        urls = []
        for index in range(n):
            name = f"{prediction['id']}-{index}.png"
            image = fake_image(
                str(values["prompt"]), seed + index, width, height, init=init, strength=strength, mask=mask
            )
            self.files[name] = encode(image)
            urls.append(f"{self.output_base or self.url}/files/{name}")
        prediction.update(status="succeeded", output=urls, completed_at=_now(), metrics={"predict_time": 0.1})


def _problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response({"title": title, "detail": detail, "status": status}, status=status)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _image(value: Any) -> Image.Image | None:
    if not isinstance(value, str) or not value.startswith("data:"):
        return None
    image = Image.open(io.BytesIO(base64.b64decode(value.partition(",")[2])))
    image.load()
    return image


async def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.05)
    parser.add_argument("--token", default="r8_test")
    args = parser.parse_args()
    fake = FakeReplicate(token=args.token, step_delay=args.step_delay)
    url = await fake.start(args.port)
    print(f"listening on {url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
