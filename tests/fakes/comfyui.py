"""A fake ComfyUI server (aiohttp) for the routes the adapter and ComfyUI's own websocket example use.

Like the real one: ``POST /prompt`` validates the API-format graph against ``/object_info`` (unknown class,
missing input, bad link, unknown checkpoint or input image → 400 with ``error`` and ``node_errors``) and
answers ``{prompt_id, number, node_errors}``; one worker runs prompts in order; the WebSocket
``/ws?clientId=`` gets a ``status`` on connect and, for the running prompt's client only,
``execution_start``, ``execution_cached``, ``executing`` per node, ``progress {value, max}`` per step with a
binary preview frame (``>II`` event 1, format 1 = JPEG, then the image), ``executed`` for each SaveImage,
``execution_success`` and ``executing {node: null}``; ``/history/{id}``, ``/view``, ``/upload/image``,
``/queue`` (GET; POST ``{"delete": [...]}``), ``/interrupt`` (``{"prompt_id"}`` targets one prompt),
``/system_stats``, ``/object_info[/{class}]``. Failures: ``fail_next`` makes the next prompt end with
``execution_error`` (e.g. an out-of-memory exception type).

Tests hold a prompt at a step with ``pause_at`` and ``resume()``; ``python -m tests.fakes.comfyui`` runs it
as its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from tests.fakes.pixels import encode, fake_image

CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"]
NODES: dict[str, dict[str, Any]] = {
    "CheckpointLoaderSimple": {"required": {"ckpt_name": [CHECKPOINTS]}, "output": ["MODEL", "CLIP", "VAE"]},
    "EmptyLatentImage": {
        "required": {"width": ["INT", {}], "height": ["INT", {}], "batch_size": ["INT", {}]},
        "output": ["LATENT"],
    },
    "CLIPTextEncode": {"required": {"text": ["STRING", {}], "clip": ["CLIP"]}, "output": ["CONDITIONING"]},
    "KSampler": {
        "required": {
            "model": ["MODEL"],
            "seed": ["INT", {}],
            "steps": ["INT", {}],
            "cfg": ["FLOAT", {}],
            "sampler_name": [["euler", "euler_ancestral", "dpmpp_2m"]],
            "scheduler": [["normal", "karras"]],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "denoise": ["FLOAT", {}],
        },
        "output": ["LATENT"],
    },
    "VAEDecode": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}, "output": ["IMAGE"]},
    "VAEEncode": {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}, "output": ["LATENT"]},
    "VAEEncodeForInpaint": {
        "required": {"pixels": ["IMAGE"], "vae": ["VAE"], "mask": ["MASK"], "grow_mask_by": ["INT", {}]},
        "output": ["LATENT"],
    },
    "RepeatLatentBatch": {"required": {"samples": ["LATENT"], "amount": ["INT", {}]}, "output": ["LATENT"]},
    "LoadImage": {"required": {"image": [[]]}, "output": ["IMAGE", "MASK"]},
    "LoadImageMask": {
        "required": {"image": [[]], "channel": [["alpha", "red", "green", "blue"]]},
        "output": ["MASK"],
    },
    "SaveImage": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}, "output": []},
}


@dataclass
class _Prompt:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    client_id: str | None


@dataclass
class FakeComfyUI:
    step_delay: float = 0.0
    pause_at: int | None = None
    fail_next: tuple[str, str] | None = None  # (exception_type, exception_message) for the next prompt
    # observed by tests
    prompts: list[dict[str, Any]] = field(default_factory=list)
    interrupts: list[Any] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    finished: list[dict[str, Any]] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # seconds each prompt ran (for bench/)

    def __post_init__(self) -> None:
        self.paused = asyncio.Event()
        self._resume = asyncio.Event()
        self._changed = asyncio.Event()
        self._queue: deque[_Prompt] = deque()
        self._wake = asyncio.Event()
        self._running: _Prompt | None = None
        self._interrupt = False
        self._number = 0
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, bytes] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None

    def resume(self) -> None:
        self._resume.set()

    async def until(self, predicate: Any) -> None:
        """Wait until ``predicate()`` holds; checked after every prompt, interrupt, deletion and finish."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def start(self, port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024**2)
        app.add_routes(
            [
                web.post("/prompt", self.post_prompt),
                web.get("/prompt", self.get_prompt),
                web.get("/queue", self.get_queue),
                web.post("/queue", self.post_queue),
                web.post("/interrupt", self.interrupt),
                web.get("/history", self.all_history),
                web.get("/history/{prompt_id}", self.one_history),
                web.get("/view", self.view),
                web.post("/upload/image", self.upload),
                web.get("/system_stats", self.system_stats),
                web.get("/object_info", self.object_info),
                web.get("/object_info/{node_class}", self.object_info),
                web.get("/ws", self.websocket),
                web.get("/_fake/durations", self.get_durations),
            ]
        )
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._worker = asyncio.create_task(self._work())
        return self.url

    async def drop_sockets(self) -> None:
        """Close every WebSocket (a proxy timing out, say); prompts keep running."""
        for socket in list(self._sockets.values()):
            await socket.close()

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        for socket in list(self._sockets.values()):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routes ----------------------------------------------------------------------------------------

    async def get_durations(self, request: web.Request) -> web.Response:
        """Not a ComfyUI route: the bench reads the backend's own generation time here."""
        return web.json_response(self.durations)

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"system": {"os": "posix", "comfyui_version": "0.3.40", "python_version": "3.12"}, "devices": []}
        )

    async def object_info(self, request: web.Request) -> web.Response:
        wanted = request.match_info.get("node_class")
        info = {}
        for name, spec in NODES.items():
            if wanted and name != wanted:
                continue
            required = dict(spec["required"])
            if name in ("LoadImage", "LoadImageMask"):
                required["image"] = [sorted(self.inputs)] + (
                    [{"image_upload": True}] if name == "LoadImage" else []
                )
            info[name] = {"input": {"required": required}, "output": spec["output"], "name": name}
        return web.json_response(info)

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        part = form.get("image")
        if not isinstance(part, web.FileField):
            return web.Response(status=400)
        name = part.filename
        data = part.file.read()
        subfolder = str(form.get("subfolder", ""))
        key = f"{subfolder}/{name}" if subfolder else name
        if key in self.inputs and str(form.get("overwrite", "")).lower() != "true":
            stem, _, ext = name.rpartition(".")
            name = f"{stem} (1).{ext}"
            key = f"{subfolder}/{name}" if subfolder else name
        self.inputs[key] = data
        return web.json_response({"name": name, "subfolder": subfolder, "type": "input"})

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        graph = body.get("prompt")
        if not isinstance(graph, dict):
            return web.json_response(
                {
                    "error": {
                        "type": "invalid_prompt",
                        "message": "Cannot execute because no prompt was given",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": [],
                },
                status=400,
            )
        node_errors = self._validate(graph)
        if node_errors:
            return web.json_response(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": node_errors,
                },
                status=400,
            )
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        self._number += 1
        entry = _Prompt(self._number, prompt_id, graph, body.get("client_id"))
        self.prompts.append(body)
        self._queue.append(entry)
        self._wake.set()
        self._changed.set()
        await self._broadcast_status()
        return web.json_response({"prompt_id": prompt_id, "number": entry.number, "node_errors": {}})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._remaining()}})

    async def get_queue(self, request: web.Request) -> web.Response:
        def row(p: _Prompt) -> list[Any]:
            return [p.number, p.prompt_id, p.graph, {"client_id": p.client_id}, []]

        return web.json_response(
            {
                "queue_running": [row(self._running)] if self._running else [],
                "queue_pending": [row(p) for p in self._queue],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._queue.clear()
        for prompt_id in body.get("delete", []):
            self.deleted.append(prompt_id)
            for item in list(self._queue):
                if item.prompt_id == prompt_id:
                    self._queue.remove(item)
        self._changed.set()
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        target = body.get("prompt_id") if isinstance(body, dict) else None
        self.interrupts.append(target)
        self._changed.set()
        if self._running is not None and (target is None or target == self._running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def all_history(self, request: web.Request) -> web.Response:
        return web.json_response(self.history)

    async def one_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request: web.Request) -> web.Response:
        kind = request.query.get("type", "output")
        name = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        key = f"{subfolder}/{name}" if subfolder else name
        data = (self.outputs if kind == "output" else self.inputs).get(key)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self._sockets[sid] = socket
        await socket.send_json(
            {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": self._remaining()}}, "sid": sid},
            }
        )
        try:
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if self._sockets.get(sid) is socket:
                del self._sockets[sid]
        return socket

    # -- validation ------------------------------------------------------------------------------------

    def _validate(self, graph: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            spec = NODES.get(str(class_type))
            problems = []
            if spec is None:
                problems.append(
                    _problem("invalid_node", f"Node type {class_type} not found", str(class_type))
                )
            else:
                inputs = node.get("inputs", {})
                for name, kind in spec["required"].items():
                    value = inputs.get(name)
                    if value is None:
                        problems.append(_problem("required_input_missing", "Required input is missing", name))
                    elif isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                        if value[0] not in graph:
                            problems.append(_problem("bad_linked_input", "Bad linked input", name))
                    elif name == "ckpt_name" and value not in CHECKPOINTS:
                        problems.append(
                            _problem(
                                "value_not_in_list",
                                "Value not in list",
                                f"ckpt_name: '{value}' not in {CHECKPOINTS}",
                            )
                        )
                    elif (
                        class_type in ("LoadImage", "LoadImageMask")
                        and name == "image"
                        and value not in self.inputs
                    ):
                        problems.append(
                            _problem(
                                "value_not_in_list", "Value not in list", f"image: '{value}' not in list"
                            )
                        )
                    elif kind[0] == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
                        problems.append(
                            _problem(
                                "invalid_input_type", "Failed to convert an input value to a INT value", name
                            )
                        )
            if problems:
                errors[node_id] = {"errors": problems, "dependent_outputs": [], "class_type": class_type}
        return errors

    # -- execution -------------------------------------------------------------------------------------

    def _remaining(self) -> int:
        return len(self._queue) + (1 if self._running else 0)

    async def _send(self, client_id: str | None, message: dict[str, Any] | bytes) -> None:
        socket = self._sockets.get(client_id or "")
        if socket is None or socket.closed:
            return
        try:
            if isinstance(message, bytes):
                await socket.send_bytes(message)
            else:
                await socket.send_json(message)
        except (ConnectionError, RuntimeError):
            pass

    async def _broadcast_status(self) -> None:
        for sid in list(self._sockets):
            await self._send(
                sid,
                {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self._remaining()}}}},
            )

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            self._running = self._queue.popleft()
            started = time.perf_counter()
            try:
                await self._execute(self._running)
            finally:
                self.durations.append(time.perf_counter() - started)
                self._running, self._interrupt = None, False
                await self._broadcast_status()

    async def _execute(self, item: _Prompt) -> None:
        started = time.time()
        graph, cid, pid = item.graph, item.client_id, item.prompt_id
        await self._send(
            cid, {"type": "execution_start", "data": {"prompt_id": pid, "timestamp": int(started * 1000)}}
        )
        await self._send(
            cid, {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid, "timestamp": 0}}
        )
        sampler_id, sampler = next((k, v) for k, v in graph.items() if v["class_type"] == "KSampler")
        inputs = sampler["inputs"]
        steps, seed, denoise = int(inputs["steps"]), int(inputs["seed"]), float(inputs["denoise"])
        prompt = self._text(graph, inputs["positive"])
        width, height, batch, init, mask = self._latent(graph, inputs["latent_image"])
        for node_id, node in graph.items():
            if node_id == sampler_id or node["class_type"] == "SaveImage":
                continue
            await self._send(
                cid,
                {"type": "executing", "data": {"node": node_id, "display_node": node_id, "prompt_id": pid}},
            )
        await self._send(
            cid,
            {"type": "executing", "data": {"node": sampler_id, "display_node": sampler_id, "prompt_id": pid}},
        )
        done = 0
        for step in range(1, steps + 1):
            if self.pause_at is not None and step == self.pause_at:
                self.pause_at = None
                self.paused.set()
                await self._resume.wait()
                self._resume.clear()
            if self._interrupt:
                break
            await asyncio.sleep(self.step_delay)
            done = step
            await self._send(
                cid,
                {
                    "type": "progress",
                    "data": {"value": step, "max": steps, "prompt_id": pid, "node": sampler_id},
                },
            )
            preview = encode(fake_image(prompt, seed, 32, 32), "JPEG")
            await self._send(cid, struct.pack(">II", 1, 1) + preview)
        status: dict[str, Any]
        outputs: dict[str, Any] = {}
        if self._interrupt:
            data = {"prompt_id": pid, "node_id": sampler_id, "node_type": "KSampler", "executed": []}
            await self._send(cid, {"type": "execution_interrupted", "data": data})
            status = {
                "status_str": "error",
                "completed": False,
                "messages": [["execution_interrupted", data]],
            }
        elif self.fail_next is not None:
            kind, text = self.fail_next
            self.fail_next = None
            data = {
                "prompt_id": pid, "node_id": sampler_id, "node_type": "KSampler", "executed": [],
                "exception_message": text, "exception_type": kind, "traceback": ["..."],
                "current_inputs": {}, "current_outputs": {},
            }  # fmt: skip
            await self._send(cid, {"type": "execution_error", "data": data})
            status = {"status_str": "error", "completed": False, "messages": [["execution_error", data]]}
        else:
            for node_id, node in graph.items():
                if node["class_type"] != "SaveImage":
                    continue
                await self._send(
                    cid,
                    {
                        "type": "executing",
                        "data": {"node": node_id, "display_node": node_id, "prompt_id": pid},
                    },
                )
                prefix = node["inputs"].get("filename_prefix", "ComfyUI")
                files = []
                for index in range(batch):
                    self._number += 1
                    name = f"{prefix}_{self._number:05}_.png"
                    image = fake_image(
                        prompt, seed + index, width, height, init=init, strength=denoise, mask=mask
                    )
                    self.outputs[name] = encode(image)
                    files.append({"filename": name, "subfolder": "", "type": "output"})
                outputs[node_id] = {"images": files}
                await self._send(
                    cid,
                    {
                        "type": "executed",
                        "data": {
                            "node": node_id,
                            "display_node": node_id,
                            "output": {"images": files},
                            "prompt_id": pid,
                        },
                    },
                )
            await self._send(
                cid,
                {
                    "type": "execution_success",
                    "data": {"prompt_id": pid, "timestamp": int(time.time() * 1000)},
                },
            )
            status = {"status_str": "success", "completed": True, "messages": []}
        self.finished.append({"prompt_id": pid, "steps": done, "interrupted": self._interrupt})
        self._changed.set()
        self.history[pid] = {
            "prompt": [item.number, pid, graph, {"client_id": cid}, list(outputs)],
            "outputs": outputs,
            "status": status,
            "meta": {},
        }
        await self._send(cid, {"type": "executing", "data": {"node": None, "prompt_id": pid}})

    def _text(self, graph: dict[str, Any], link: list[Any]) -> str:
        return str(graph[link[0]]["inputs"].get("text", ""))

    def _latent(
        self, graph: dict[str, Any], link: list[Any]
    ) -> tuple[int, int, int, Image.Image | None, Image.Image | None]:
        node = graph[link[0]]
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "EmptyLatentImage":
            return int(inputs["width"]), int(inputs["height"]), int(inputs["batch_size"]), None, None
        if kind == "RepeatLatentBatch":
            width, height, _, init, mask = self._latent(graph, inputs["samples"])
            return width, height, int(inputs["amount"]), init, mask
        if kind in ("VAEEncode", "VAEEncodeForInpaint"):
            image = self._image(graph, inputs["pixels"])
            mask = self._image(graph, inputs["mask"]) if kind == "VAEEncodeForInpaint" else None
            return image.width, image.height, 1, image, mask
        raise ValueError(f"the fake cannot make a latent with {kind}")

    def _image(self, graph: dict[str, Any], link: list[Any]) -> Image.Image:
        node = graph[link[0]]
        image = Image.open(io.BytesIO(self.inputs[node["inputs"]["image"]]))
        image.load()
        return image.convert("L") if node["class_type"] == "LoadImageMask" else image.convert("RGB")


def _problem(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


async def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.05)
    args = parser.parse_args()
    fake = FakeComfyUI(step_delay=args.step_delay)
    url = await fake.start(args.port)
    print(f"listening on {url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
