"""``ComfyUIEngine``: the Engine interface over a ComfyUI server (``ENGINE=comfyui+http://host:8188``).

Each operation runs a workflow template (``engine.adapters.comfy_workflows``: ``COMFYUI_WORKFLOWS``, bundled
txt2img/img2img defaults on the checkpoint ``MODEL`` names). A job:

1. uploads its input image (and mask) with ``POST /upload/image``;
2. opens the WebSocket ``/ws?clientId=<ours>`` (one client id per adapter, so ComfyUI sends us only our
   prompts' events) *before* queueing, so no event is missed;
3. queues the filled workflow with ``POST /prompt {prompt, client_id, prompt_id}`` (a 400 with
   ``node_errors`` becomes a short message naming the node);
4. follows ``executing``/``progress`` messages (steps) and the binary preview frames (4-byte event type 1,
   4-byte image type 1 JPEG / 2 PNG, then the image) while our prompt executes;
5. on ``execution_success`` reads ``GET /history/{id}`` and downloads each saved image with ``GET /view``.
   If the socket fails, ``/history`` is polled instead.

Cancel removes our prompt from the queue (``POST /queue {"delete": [id]}``) while it waits, and calls
``POST /interrupt {"prompt_id": id}`` only when ``GET /queue`` shows our prompt running: another client's
prompt is never interrupted. ComfyUI queues on its own, but runs one prompt at a time: one slot.
Health is ``GET /system_stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from engine.adapters.comfy_workflows import Workflow, load_workflows, operations_of, workflow_for
from engine.adapters.common import (
    HttpClient,
    Plan,
    decode_result,
    finish,
    plan,
    png_bytes,
    preview_jpeg,
    timeout,
)
from engine.base import (
    ENGINE_SECONDS,
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    EngineUnsupported,
    GenerationRequest,
    ProgressCallback,
    ProgressUpdate,
    unsupported_message,
)

log = logging.getLogger(__name__)

KIND = "comfyui"
PREVIEW_EVENT = 1


class ComfyUIEngine:
    kind = KIND
    slots = 1

    def __init__(
        self,
        url: str,
        *,
        checkpoint: str,
        workflows: str | Path | None = None,
        name: str | None = None,
        job_timeout: float = 900.0,
        poll_interval: float = 0.5,
        lost_after: float = 3.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or f"comfyui:{self.url.split('://', 1)[-1]}"
        self.checkpoint = checkpoint
        self.workflows: dict[str, Workflow] = load_workflows(workflows)
        self.operations = operations_of(self.workflows)
        self.client_id = uuid.uuid4().hex
        self.checkpoints: list[str] = []
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.lost_after = lost_after
        self._http = HttpClient()

    def __repr__(self) -> str:
        return f"ComfyUIEngine({self.url!r})"

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the server answers and read its checkpoint names (for ``--model``)."""
        info = await self._json("GET", "/object_info/CheckpointLoaderSimple")
        try:
            names = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        except (KeyError, IndexError, TypeError):
            names = []
        self.checkpoints = [str(n) for n in names] if isinstance(names, list) else []
        if self.checkpoints and self.checkpoint not in self.checkpoints:
            known = ", ".join(self.checkpoints[:10])
            raise EngineError(
                f"MODEL {self.checkpoint!r} is not a checkpoint of {self.name}; it has: {known}"
            )

    async def close(self) -> None:
        await self._http.close()

    async def health(self) -> bool:
        try:
            async with self._http.session().get(self.url + "/system_stats", timeout=timeout(3)) as response:
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
        workflow = workflow_for(self.workflows, request.operation)
        if workflow is None:
            raise EngineUnsupported(unsupported_message(request.operation))
        job = plan(request)
        values = await self._values(request, job)
        graph = workflow.fill(values)
        prompt_id = str(uuid.uuid4())
        started = time.monotonic()
        queued = False
        try:
            async with self._http.session().ws_connect(
                f"{self.url}/ws",
                params={"clientId": self.client_id},
                heartbeat=10,
                timeout=aiohttp.ClientWSTimeout(ws_close=2),
            ) as socket:
                await self._queue(graph, prompt_id)
                queued = True
                watcher = (
                    asyncio.ensure_future(self._watch_cancel(prompt_id, cancel, socket)) if cancel else None
                )
                try:
                    outcome = await asyncio.wait_for(
                        self._listen(socket, prompt_id, on_progress), self.job_timeout
                    )
                finally:
                    if watcher is not None:
                        watcher.cancel()
        except aiohttp.ClientError as error:  # no socket, or it broke: follow /history instead
            log.info("%s: event socket failed (%r); polling /history", self.name, error)
            outcome = None
        except TimeoutError:
            await self._cancel(prompt_id)
            raise EngineError(f"{self.name} took longer than {self.job_timeout:g} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cancel(prompt_id))
            raise
        if not queued and not (cancel is not None and cancel.cancelled):
            await self._queue(graph, prompt_id)
        if outcome == "interrupted" or (cancel is not None and cancel.cancelled):
            raise EngineCancelled("cancelled")
        entry = await self._history(prompt_id, wait=outcome is None, cancel=cancel)
        images = await self._outputs(entry, request.n)
        results = finish(job, images)
        seconds = time.monotonic() - started
        for image in results:
            image.info[ENGINE_SECONDS] = seconds
        return results

    async def _values(self, request: GenerationRequest, job: Plan) -> dict[str, Any]:
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "negative": request.negative_prompt,
            "seed": request.seed,
            "width": job.width,
            "height": job.height,
            "steps": job.steps,
            "guidance": request.guidance,
            "batch": request.n,
            "model": self._model(request.model),
            "strength": job.strength,
            "image": "",
            "mask": "",
        }
        if job.init_image is not None:
            values["image"] = await self._upload(job.init_image, "image")
        if job.mask is not None:
            values["mask"] = await self._upload(job.mask.convert("RGB"), "mask")
        return values

    def _model(self, alias: str | None) -> str:
        if alias is None or alias == "default":
            return self.checkpoint
        wanted = alias.lower()
        for name in self.checkpoints:
            if wanted in (name.lower(), Path(name).stem.lower()):
                return name
        known = ", ".join(Path(n).stem for n in self.checkpoints[:10]) or "none"
        raise EngineError(f"--model {alias} is not a checkpoint of {self.name}; it has: {known}")

    async def _upload(self, image: Image.Image, label: str) -> str:
        form = aiohttp.FormData()
        form.add_field(
            "image",
            png_bytes(image),
            filename=f"imaginebot-{label}-{uuid.uuid4().hex}.png",
            content_type="image/png",
        )
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        data = await self._json("POST", "/upload/image", data=form)
        name, subfolder = data.get("name"), data.get("subfolder") or ""
        if not isinstance(name, str) or not name:
            raise EngineError(f"{self.name} sent a malformed answer to an upload")
        return f"{subfolder}/{name}" if subfolder else name

    async def _queue(self, graph: dict[str, Any], prompt_id: str) -> None:
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        try:
            async with self._http.session().post(
                self.url + "/prompt", json=body, timeout=timeout(30)
            ) as response:
                data = await _json_or_none(response)
                if response.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineUnavailable(f"{self.name} cannot be reached") from error
        raise prompt_error(response.status, data, self.name)

    async def _listen(
        self, socket: aiohttp.ClientWebSocketResponse, prompt_id: str, on_progress: ProgressCallback | None
    ) -> str:
        """Our prompt's events until it ends: ``success`` or ``interrupted`` (errors raise)."""
        running = False
        step, total = 0, 0
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                data = message.data
                if running and on_progress is not None and step and len(data) > 8:
                    event, _format = struct.unpack(">II", data[:8])
                    if event == PREVIEW_EVENT:
                        preview = preview_jpeg(data[8:])
                        if preview is not None:
                            on_progress(ProgressUpdate(step=step, total=total, preview=preview))
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            event = message.json()
            kind, data = event.get("type"), event.get("data") or {}
            if not isinstance(data, dict) or data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "execution_start" and data.get("prompt_id") == prompt_id:
                running = True
            elif kind == "executing" and data.get("prompt_id") == prompt_id:
                running = True
                if data.get("node") is None:
                    return "success"
            elif kind == "progress" and running:
                step, total = int(data.get("value") or 0), int(data.get("max") or 0)
                if on_progress is not None and 0 < step <= total:
                    on_progress(ProgressUpdate(step=step, total=total))
            elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                return "success"
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                return "interrupted"
            elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                raise execution_error(data, self.name)
        raise aiohttp.ClientConnectionError("the event socket closed")

    async def _history(self, prompt_id: str, *, wait: bool, cancel: CancelToken | None) -> dict[str, Any]:
        """Our prompt's ``/history`` entry (polled until it appears when ``wait``)."""
        deadline = time.monotonic() + self.job_timeout
        failing_since: float | None = None
        while True:
            try:
                data = await self._json("GET", f"/history/{prompt_id}")
                failing_since = None
                entry = data.get(prompt_id)
                if isinstance(entry, dict):
                    status = entry.get("status") or {}
                    if isinstance(status, dict) and status.get("status_str") == "error":
                        raise history_error(status, self.name)
                    return entry
                if not wait:
                    raise EngineError(f"{self.name} finished the job but has no record of its images")
            except EngineUnavailable:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.lost_after:
                    raise
            if cancel is not None and cancel.cancelled:
                await self._cancel(prompt_id)
                raise EngineCancelled("cancelled")
            if time.monotonic() > deadline:
                await self._cancel(prompt_id)
                raise EngineError(f"{self.name} took longer than {self.job_timeout:g} s")
            await asyncio.sleep(self.poll_interval)

    async def _outputs(self, entry: dict[str, Any], n: int) -> list[Image.Image]:
        outputs = entry.get("outputs")
        if not isinstance(outputs, dict):
            raise EngineError(f"{self.name} sent a malformed history entry")
        files = [
            item
            for node in outputs.values()
            if isinstance(node, dict)
            for item in node.get("images", [])
            if isinstance(item, dict) and "filename" in item
        ]
        saved = [f for f in files if f.get("type") == "output"] or files  # SaveImage over PreviewImage
        if len(saved) < n:
            raise EngineError(f"{self.name} returned {len(saved)} image(s) instead of {n}")
        images = []
        for item in saved[:n]:
            params = {k: str(item.get(k) or "") for k in ("filename", "subfolder", "type")}
            try:
                async with self._http.session().get(
                    self.url + "/view", params=params, timeout=timeout(60)
                ) as response:
                    if response.status != 200:
                        raise EngineError(f"{self.name} lost a result image ({response.status})")
                    data = await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise EngineUnavailable(f"{self.name} went away while sending results") from error
            images.append(decode_result(data, self.name))
        return images

    # -- cancel ----------------------------------------------------------------------------------------

    async def _watch_cancel(
        self, prompt_id: str, cancel: CancelToken, socket: aiohttp.ClientWebSocketResponse
    ) -> None:
        while not cancel.cancelled:  # noqa: ASYNC110 (a thread-safe token, not an asyncio.Event)
            await asyncio.sleep(0.05)
        if await self._cancel(prompt_id) != "interrupted":
            await socket.close()  # removed from the queue (no event will come) or already done

    async def _cancel(self, prompt_id: str) -> str:
        """Remove our prompt if it waits (``removed``); interrupt only if it is the one running."""
        try:
            queue = await self._json("GET", "/queue")
        except EngineError:
            return "unknown"
        running = {
            str(item[1])
            for item in queue.get("queue_running", [])
            if isinstance(item, list) and len(item) > 1
        }
        pending = {
            str(item[1])
            for item in queue.get("queue_pending", [])
            if isinstance(item, list) and len(item) > 1
        }
        try:
            if prompt_id in pending:
                await self._json("POST", "/queue", json={"delete": [prompt_id]})
                return "removed"
            if prompt_id in running:
                await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})
                return "interrupted"
        except EngineError:
            return "unknown"
        return "not queued"

    # -- HTTP ------------------------------------------------------------------------------------------

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._http.session().request(
                method, self.url + path, timeout=timeout(30), **kwargs
            ) as response:
                data = await _json_or_none(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineUnavailable(f"{self.name} cannot be reached") from error
        if status >= 500:
            raise EngineUnavailable(f"{self.name} answered {status}")
        if status != 200:
            raise EngineError(f"{self.name} answered {status} to {path.split('?')[0]}")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise EngineError(f"{self.name} sent a malformed answer to {path}")
        return data


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None


def prompt_error(status: int, data: Any, name: str) -> EngineError:
    """``POST /prompt``'s 400: ``{"error": {"type", "message", "details"}, "node_errors": {id: {...}}}``."""
    if status >= 500:
        return EngineUnavailable(f"{name} answered {status}")
    if not isinstance(data, dict):
        return EngineError(f"{name} refused the workflow ({status})")
    error = data.get("error")
    message = (
        str(error.get("message") or "invalid workflow") if isinstance(error, dict) else "invalid workflow"
    )
    for node_id, node in (data.get("node_errors") or {}).items():
        if isinstance(node, dict):
            errors = node.get("errors") or [{}]
            first = errors[0] if isinstance(errors[0], dict) else {}
            detail = first.get("details") or first.get("message") or ""
            return EngineError(
                f"{name} refused the workflow: node {node_id} ({node.get('class_type')}): {str(detail)[:100]}"
            )
    return EngineError(f"{name} refused the workflow: {message[:120]}")


def history_error(status: dict[str, Any], name: str) -> EngineError:
    """A failed ``/history`` entry: its ``execution_interrupted`` or ``execution_error`` message."""
    for message in status.get("messages") or []:
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        if message[0] == "execution_interrupted":
            return EngineCancelled("cancelled")
        if message[0] == "execution_error":
            return execution_error(message[1], name)
    return EngineError(f"{name} failed (no reason given)")


def execution_error(data: dict[str, Any], name: str) -> EngineError:
    kind = str(data.get("exception_type") or "")
    text = str(data.get("exception_message") or "")
    if "OutOfMemory" in kind or "out of memory" in text.lower():
        return EngineOutOfMemory(f"{name} ran out of GPU memory")
    node = data.get("node_type") or data.get("node_id") or "a node"
    return EngineError(f"{name} failed in {node}: {text.strip()[:100] or kind or 'error'}")
