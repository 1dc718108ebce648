"""``A1111Engine``: the Engine interface over an AUTOMATIC1111-compatible API (A1111 ``--api``, Forge, SD.Next).

``ENGINE=a1111+http://user:password@host:7860`` (credentials: A1111's ``--api-auth``, sent as HTTP Basic).
Query options: ``?sampler=Euler a`` (a name from ``/sdapi/v1/samplers``), ``&upscaler=R-ESRGAN 4x+`` (a name
from ``/sdapi/v1/upscalers``), ``&poll=0.5`` (seconds between progress polls), ``&timeout=900`` (seconds one
generation may take).

* Operations: txt2img, img2img (image prompts, Vary), upscales (2x with the ``upscaler`` option through
  ``/sdapi/v1/extra-single-image``, else Lanczos here; then img2img at the upscale strength) and outpainting
  (img2img with a mask over the new area, ``inpainting_fill`` = original): everything our engine does.
  ``--tile`` maps to A1111's ``tiling``; ``--stop``, ``--chaos`` and ``::`` weights are not sent (A1111
  uses its own prompt syntax), the plain reading of the prompt is.
* Names are read, never guessed: at start the adapter reads ``/sdapi/v1/samplers`` and ``/sdapi/v1/sd-models``.
  The sampler is the ``sampler`` option, else the first of ``PREFERRED_SAMPLERS`` the server has, else its
  first. A request's ``--model x`` must name a checkpoint of the server (its ``model_name``, title or
  hash, case-insensitive); it is sent as ``override_settings.sd_model_checkpoint`` for that job only.
* One job at a time: A1111 runs one generation at a time and its progress and interrupt are global, so the
  adapter has one slot and sends the next job only when the last answered.
* Progress: ``GET /sdapi/v1/progress`` every ``poll`` seconds while the POST runs; ``current_image`` (A1111's
  live preview) becomes our preview JPEG.
* Cancel interrupts only our own job: each request carries ``force_task_id``, and ``/internal/progress``
  says whether that task is the one running. A server without that route is never interrupted: the job is
  cancelled for the user at once and the backend's answer is dropped when it comes.
* Seeds: ``batch_size`` = n with ``seed`` = the job seed, so tile i has seed + i (``engine.seeds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from typing import Any

import aiohttp
from PIL import Image

from engine.adapters.common import (
    HttpClient,
    Plan,
    base64_bytes,
    decode_base64_result,
    finish,
    plan,
    png_base64,
    preview_jpeg,
    timeout,
)
from engine.base import (
    ALL_OPERATIONS,
    ENGINE_SECONDS,
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    GenerationRequest,
    ProgressCallback,
    ProgressUpdate,
)

log = logging.getLogger(__name__)

KIND = "a1111"
PREFERRED_SAMPLERS = ("DPM++ 2M", "DPM++ 2M Karras", "Euler a", "Euler")
INPAINT_FILL_ORIGINAL = 1
"""A1111's ``inpainting_fill``: 0 fill, 1 original, 2 latent noise, 3 latent nothing."""


class A1111Engine:
    """One AUTOMATIC1111-compatible server; one slot (the server runs one generation at a time)."""

    kind = KIND
    operations = ALL_OPERATIONS
    slots = 1

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        name: str | None = None,
        sampler: str | None = None,
        upscaler: str | None = None,
        poll_interval: float = 0.5,
        job_timeout: float = 900.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or f"a1111:{self.url.split('://', 1)[-1]}"
        auth = aiohttp.BasicAuth(user, password or "") if user else None
        self._http = HttpClient(auth=auth)
        self._wanted_sampler = sampler
        self.sampler: str | None = None
        self.upscaler = upscaler
        self.models: list[dict[str, Any]] = []
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"A1111Engine({self.url!r})"  # never the password

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the server's samplers and checkpoints; ``EngineUnavailable`` when it does not answer."""
        samplers = await self._get("/sdapi/v1/samplers")
        self.models = [m for m in await self._get("/sdapi/v1/sd-models") if isinstance(m, dict)]
        names = [str(s["name"]) for s in samplers if isinstance(s, dict) and "name" in s]
        if not names:
            raise EngineUnavailable(f"{self.name} lists no samplers")
        if self._wanted_sampler is not None:
            match = next((n for n in names if n.lower() == self._wanted_sampler.lower()), None)
            if match is None:
                raise EngineError(
                    f"{self.name} has no sampler {self._wanted_sampler!r}; it has: {', '.join(names[:12])}"
                )
            self.sampler = match
        else:
            self.sampler = next((n for n in PREFERRED_SAMPLERS if n in names), names[0])
        if self.upscaler is not None:
            upscalers = [
                str(u.get("name")) for u in await self._get("/sdapi/v1/upscalers") if isinstance(u, dict)
            ]
            match = next((n for n in upscalers if n.lower() == self.upscaler.lower()), None)
            if match is None:
                raise EngineError(
                    f"{self.name} has no upscaler {self.upscaler!r}; it has: {', '.join(upscalers[:12])}"
                )
            self.upscaler = match

    async def close(self) -> None:
        await self._http.close()

    async def health(self) -> bool:
        """A cheap GET A1111 really serves (the progress route, without its preview image)."""
        try:
            async with self._http.session().get(
                self.url + "/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout=timeout(3)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- generate --------------------------------------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        if cancel is not None and cancel.cancelled:
            raise EngineCancelled("cancelled")
        if self.sampler is None:
            await self.start()
        job = plan(request)
        if request.operation.is_upscale and self.upscaler is not None and request.init_image is not None:
            job = await self._upscaled(job, request.init_image)
        route = "/sdapi/v1/txt2img" if job.init_image is None else "/sdapi/v1/img2img"
        task_id = f"task(imaginebot-{uuid.uuid4().hex[:16]})"
        body = self._body(request, job, task_id)
        lock = self._queue_lock()
        await lock.acquire()
        started = time.monotonic()
        post = asyncio.ensure_future(self._post(route, body))
        try:
            answer = await self._follow(post, task_id, on_progress, cancel)
        except BaseException:
            if post.done():
                lock.release()
            else:  # our answer is dropped when it comes; the next job waits for it (one at a time)
                post.add_done_callback(lambda done: _release_after(done, lock))
            raise
        lock.release()
        seconds = time.monotonic() - started
        images = self._images(answer, request.n)
        results = finish(job, images)
        for image in results:
            image.info[ENGINE_SECONDS] = seconds
        return results

    async def _upscaled(self, job: Plan, original: Image.Image) -> Plan:
        """The upscale's init image made by the server's upscaler (``extra-single-image``), at the planned size."""
        body = {
            "image": png_base64(original.convert("RGB")),
            "resize_mode": 0,
            "upscaling_resize": job.width / original.width,
            "upscaler_1": self.upscaler,
        }
        answer = await self._post("/sdapi/v1/extra-single-image", body)
        image = decode_base64_result(answer.get("image"), self.name)
        if image.size != (job.width, job.height):
            image = image.resize((job.width, job.height), Image.Resampling.LANCZOS)
        return dataclasses.replace(job, init_image=image)

    def _body(self, request: GenerationRequest, job: Plan, task_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "batch_size": request.n,
            "n_iter": 1,
            "steps": job.steps,
            "cfg_scale": request.guidance,
            "width": job.width,
            "height": job.height,
            "sampler_name": self.sampler,
            "tiling": request.tile,
            "send_images": True,
            "save_images": False,
            "force_task_id": task_id,
        }
        checkpoint = self._checkpoint(request.model)
        if checkpoint is not None:
            body["override_settings"] = {"sd_model_checkpoint": checkpoint}
            body["override_settings_restore_afterwards"] = True
        if job.init_image is not None:
            body["init_images"] = [png_base64(job.init_image)]
            body["denoising_strength"] = job.strength
            body["resize_mode"] = 0
        if job.mask is not None:
            body.update(
                mask=png_base64(job.mask),
                mask_blur=4,
                inpainting_fill=INPAINT_FILL_ORIGINAL,
                inpaint_full_res=False,
                inpainting_mask_invert=0,
            )
        return body

    def _checkpoint(self, alias: str | None) -> str | None:
        """The title of the server checkpoint a ``--model`` alias names (None: the server's current one)."""
        if alias is None or alias == "default":
            return None
        wanted = alias.lower()
        for model in self.models:
            names = {str(model.get(key, "")).lower() for key in ("model_name", "title", "hash")}
            if wanted in names:
                return str(model.get("title"))
        known = ", ".join(str(m.get("model_name")) for m in self.models[:10]) or "none"
        raise EngineError(f"--model {alias} is not a checkpoint of {self.name}; it has: {known}")

    def _queue_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _follow(
        self,
        post: asyncio.Future[dict[str, Any]],
        task_id: str,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> dict[str, Any]:
        """Poll progress while the POST runs; on cancel interrupt the server only when our task runs."""
        deadline = time.monotonic() + self.job_timeout
        last_step, interrupted = -1, False
        while True:
            done, _ = await asyncio.wait({post}, timeout=self.poll_interval)
            if done:
                answer = post.result()
                if interrupted or (cancel is not None and cancel.cancelled):
                    raise EngineCancelled("cancelled")
                return answer
            if time.monotonic() > deadline:
                if await self._task_state(task_id) == "active":
                    await self._interrupt()
                raise EngineError(f"{self.name} took longer than {self.job_timeout:g} s")
            if cancel is not None and cancel.cancelled and not interrupted:
                ours = await self._task_state(task_id)
                if ours == "active":
                    await self._interrupt()
                    interrupted = True  # A1111 answers within a step with what it has; we drop it
                elif ours in ("unknown", "completed"):
                    raise EngineCancelled("cancelled")  # never interrupt what may be someone else's job
                continue  # queued behind another client's job: interrupt when ours starts
            if on_progress is not None and not interrupted:
                last_step = await self._report(on_progress, last_step)

    async def _report(self, on_progress: ProgressCallback, last_step: int) -> int:
        try:
            async with self._http.session().get(
                self.url + "/sdapi/v1/progress", params={"skip_current_image": "false"}, timeout=timeout(5)
            ) as response:
                if response.status != 200:
                    return last_step
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return last_step  # the POST tells whether the server is gone
        state = data.get("state") if isinstance(data, dict) else None
        if not isinstance(state, dict):
            return last_step
        step, total = _int(state.get("sampling_step")), _int(state.get("sampling_steps"))
        if total <= 0 or step <= 0 or step == last_step or _int(state.get("job_count")) <= 0:
            return last_step
        preview = None
        image = data.get("current_image")
        if isinstance(image, str) and image:
            with contextlib.suppress(EngineError):
                preview = preview_jpeg(base64_bytes(image, self.name))
        on_progress(ProgressUpdate(step=min(step, total), total=total, preview=preview))
        return step

    async def _task_state(self, task_id: str) -> str:
        """``active``/``queued``/``completed`` for our task, ``unknown`` where the server cannot say."""
        try:
            async with self._http.session().post(
                self.url + "/internal/progress",
                json={"id_task": task_id, "id_live_preview": -1, "live_preview": False},
                timeout=timeout(5),
            ) as response:
                if response.status != 200:
                    return "unknown"
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return "unknown"
        if not isinstance(data, dict):
            return "unknown"
        if data.get("active"):
            return "active"
        if data.get("queued"):
            return "queued"
        return "completed" if data.get("completed") else "unknown"

    async def _interrupt(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._http.session().post(self.url + "/sdapi/v1/interrupt", timeout=timeout(5)):
                pass

    # -- HTTP ------------------------------------------------------------------------------------------

    async def _get(self, path: str) -> list[Any]:
        try:
            async with self._http.session().get(self.url + path, timeout=timeout(10)) as response:
                data = await _answer(response, self.name)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineUnavailable(f"{self.name} cannot be reached") from error
        if not isinstance(data, list):
            raise EngineUnavailable(f"{self.name} sent a malformed answer to {path}")
        return data

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._http.session().post(
                self.url + path, json=body, timeout=timeout(self.job_timeout + 30)
            ) as response:
                data = await _answer(response, self.name)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineUnavailable(f"{self.name} went away mid-job") from error
        if not isinstance(data, dict):
            raise EngineError(f"{self.name} sent a malformed answer")
        return data

    def _images(self, answer: dict[str, Any], n: int) -> list[Image.Image]:
        encoded = answer.get("images")
        if not isinstance(encoded, list):
            raise EngineError(f"{self.name} sent a malformed answer (no images)")
        first = 0
        info = answer.get("info")
        with contextlib.suppress(ValueError, TypeError):
            parsed = json.loads(info) if isinstance(info, str) else info
            if isinstance(parsed, dict):
                first = max(0, _int(parsed.get("index_of_first_image")))  # 1 when a grid comes first
        encoded = encoded[first : first + n]
        if len(encoded) < n:
            raise EngineError(f"{self.name} returned {len(encoded)} image(s) instead of {n}")
        return [decode_base64_result(text, self.name) for text in encoded]


async def _answer(response: aiohttp.ClientResponse, name: str) -> Any:
    """The JSON of a 200, else the ``EngineError`` A1111's error shape describes."""
    try:
        data = await response.json(content_type=None)
    except ValueError:
        data = None
    if response.status == 200:
        if data is None:
            raise EngineError(f"{name} sent a malformed answer (not JSON)")
        return data
    raise error_from(response.status, data, name)


def error_from(status: int, data: Any, name: str) -> EngineError:
    """A1111's errors: 401 (``--api-auth``), 404/422 ``{"detail": …}`` (FastAPI), 500 ``{"error", "errors"}``."""
    detail = data.get("detail") if isinstance(data, dict) else None
    if status == 401:
        return EngineUnavailable(f"{name} refused our credentials")
    if status == 422:
        field = ""
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            field = " " + ".".join(str(p) for p in detail[0].get("loc", ())[1:])
        return EngineError(f"{name} rejected a field of the request{field}")
    if status >= 500:
        kind = str(data.get("error", "")) if isinstance(data, dict) else ""
        text = str(data.get("errors", "")) if isinstance(data, dict) else ""
        if "OutOfMemory" in kind or "out of memory" in text.lower():
            return EngineOutOfMemory(f"{name} ran out of GPU memory")
        if status in (502, 503, 504):
            return EngineUnavailable(f"{name} is unavailable ({status})")
        return EngineError(f"{name} failed ({kind or status})")
    if isinstance(detail, str) and detail:
        return EngineError(f"{name}: {detail[:120]}")
    return EngineError(f"{name} answered {status}")


def _release_after(done: asyncio.Future[Any], lock: asyncio.Lock) -> None:
    """A dropped answer came: free the queue, and mark its error as seen (no "never retrieved" warning)."""
    if not done.cancelled():
        done.exception()
    lock.release()


def _int(value: object) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return 0
