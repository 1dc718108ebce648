"""``PredictionsEngine``: a hosted predictions API in Replicate's shape.

``ENGINE=replicate+https://TOKEN@api.replicate.com/OWNER/MODEL[:VERSION]``. With a version the adapter
creates ``POST /v1/predictions {"version", "input"}``, without one ``POST /v1/models/OWNER/MODEL/predictions
{"input"}``; then it polls ``GET /v1/predictions/{id}`` (``starting`` → ``processing`` → ``succeeded`` |
``failed`` | ``canceled``), reads a percentage from the logs where the model prints a progress bar, cancels
with ``POST /v1/predictions/{id}/cancel`` and downloads the output URLs through ``engine.safe_fetch`` (the
SSRF guard and size limits of image prompts: an output pointing at a private address is refused).

Input names come from a TOML mapping (``REPLICATE_INPUTS``; the bundled ``replicate_inputs.toml`` is the
documented default): which of our fields go to which input, and which operations the model can do (an image
input → img2img, Vary and upscales; a mask input → outpainting). Images are sent as data URLs. A model
that makes one image per prediction (``n = ""``) gets one prediction per tile, seeds ``seed + i``.
The token is sent as ``Authorization: Bearer``; it never appears in names, logs or reprs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image, ImageOps

from engine.adapters.common import (
    IMG2IMG_OPERATIONS,
    HttpClient,
    Plan,
    decode_base64_result,
    finish,
    plan,
    png_base64,
    timeout,
)
from engine.base import (
    ENGINE_SECONDS,
    OUTPAINT_OPERATIONS,
    CancelToken,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    EngineUnsupported,
    GenerationRequest,
    Operation,
    ProgressCallback,
    ProgressUpdate,
    unsupported_message,
)
from engine.safe_fetch import DEFAULT_POLICY, FetchPolicy, ImageFetchError, Resolver, fetch_image

log = logging.getLogger(__name__)

KIND = "replicate"
DEFAULT_INPUTS = Path(__file__).with_name("replicate_inputs.toml")
TERMINAL = ("succeeded", "failed", "canceled", "aborted")
_TQDM = re.compile(r"(\d{1,3})%\|[^\n]*?(\d+)/(\d+)")
_PERCENT = re.compile(r"(\d{1,3})%")
FIELDS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance",
    "seed",
    "n",
    "image",
    "strength",
    "mask",
)


@dataclass(frozen=True)
class InputMap:
    """Our field → the model's input name (``""`` = not sent), plus inputs sent with every prediction."""

    names: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    mask_invert: bool = False

    def name(self, ours: str) -> str:
        return self.names.get(ours, "")

    @property
    def operations(self) -> frozenset[Operation]:
        ops = {Operation.TXT2IMG}
        if self.name("image"):
            ops |= IMG2IMG_OPERATIONS
            if self.name("mask"):
                ops |= OUTPAINT_OPERATIONS
        return frozenset(ops)


def load_input_map(path: str | Path | None = None) -> InputMap:
    """The mapping file (``EngineError`` naming it when it is wrong); the bundled default without one."""
    source = Path(path) if path else DEFAULT_INPUTS
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise EngineError(f"REPLICATE_INPUTS {source.name} cannot be read: {error}") from None
    unknown = set(data) - set(FIELDS) - {"extra", "mask_invert"}
    if unknown:
        raise EngineError(f"REPLICATE_INPUTS {source.name}: unknown fields {', '.join(sorted(unknown))}")
    names = {key: value for key, value in data.items() if key in FIELDS}
    if not all(isinstance(v, str) for v in names.values()) or not names.get("prompt"):
        raise EngineError(
            f"REPLICATE_INPUTS {source.name}: each field maps to an input name; prompt is required"
        )
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise EngineError(f"REPLICATE_INPUTS {source.name}: [extra] must be a table")
    return InputMap(names, extra, bool(data.get("mask_invert", False)))


class PredictionsEngine:
    kind = KIND

    def __init__(
        self,
        base_url: str,
        model: str,
        token: str | None,
        *,
        version: str | None = None,
        name: str | None = None,
        inputs: InputMap | None = None,
        slots: int = 4,
        poll_interval: float = 1.0,
        job_timeout: float = 900.0,
        lost_after: float = 10.0,
        fetch_policy: FetchPolicy = DEFAULT_POLICY,
        resolver: Resolver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model, self.version = model.strip("/"), version
        self.name = name or f"replicate:{self.model}"
        self.inputs = inputs or load_input_map()
        self.operations = self.inputs.operations
        self.slots = slots
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.lost_after = lost_after
        self.fetch_policy = fetch_policy
        self.resolver = resolver
        self._http = HttpClient(headers={"Authorization": f"Bearer {token}"} if token else {})

    def __repr__(self) -> str:
        return f"PredictionsEngine({self.base_url!r}, {self.model!r})"  # never the token

    async def start(self) -> None:
        """The model exists and our token is accepted (``GET /v1/models/OWNER/MODEL``)."""
        await self._call("GET", f"/v1/models/{self.model}")

    async def close(self) -> None:
        await self._http.close()

    async def health(self) -> bool:
        try:
            await self._call("GET", f"/v1/models/{self.model}", seconds=5)
        except EngineError:
            return False
        return True

    # -- generate --------------------------------------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        if cancel is not None and cancel.cancelled:
            raise EngineCancelled("cancelled")
        if request.operation not in self.operations:
            raise EngineUnsupported(unsupported_message(request.operation))
        job = plan(request)
        started = time.monotonic()
        if self.inputs.name("n"):
            images = await self._predict(
                self._input(request, job, request.seed, request.n), on_progress, cancel
            )
        else:  # one prediction per tile, each with its tile seed
            seeds = [(request.seed + i) % 2**32 for i in range(request.n)]
            report = [on_progress] + [None] * (len(seeds) - 1)  # the first tile's progress stands for all
            results = await asyncio.gather(
                *(
                    self._predict(self._input(request, job, s, 1), p, cancel)
                    for s, p in zip(seeds, report, strict=True)
                )
            )
            images = [image for result in results for image in result[:1]]
        if len(images) < request.n:
            raise EngineError(f"{self.name} returned {len(images)} image(s) instead of {request.n}")
        results_ = finish(job, images[: request.n])
        seconds = time.monotonic() - started
        for image in results_:
            image.info[ENGINE_SECONDS] = seconds
        return results_

    def _input(self, request: GenerationRequest, job: Plan, seed: int, n: int) -> dict[str, Any]:
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "width": job.width,
            "height": job.height,
            "steps": job.steps,
            "guidance": request.guidance,
            "seed": seed,
            "n": n,
        }
        if job.init_image is not None:
            values["image"] = "data:image/png;base64," + png_base64(job.init_image)
            values["strength"] = job.strength
        if job.mask is not None:
            mask = ImageOps.invert(job.mask) if self.inputs.mask_invert else job.mask
            values["mask"] = "data:image/png;base64," + png_base64(mask)
        body = dict(self.inputs.extra)
        for ours, value in values.items():
            theirs = self.inputs.name(ours)
            if theirs:
                body[theirs] = value
        return body

    async def _predict(
        self, body: dict[str, Any], on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> list[Image.Image]:
        if self.version:
            created = await self._call(
                "POST", "/v1/predictions", json={"version": self.version, "input": body}
            )
        else:
            created = await self._call("POST", f"/v1/models/{self.model}/predictions", json={"input": body})
        prediction_id = created.get("id")
        if not isinstance(prediction_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", prediction_id):
            raise EngineError(f"{self.name} sent a malformed prediction")
        try:
            final = await self._poll(prediction_id, created, on_progress, cancel)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cancel(prediction_id))
            raise
        return await self._outputs(final.get("output"))

    async def _poll(
        self,
        prediction_id: str,
        prediction: dict[str, Any],
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.job_timeout
        failing_since: float | None = None
        last: tuple[int, int] | None = None
        while True:
            status = prediction.get("status")
            if status in TERMINAL:
                break
            progress = progress_of(str(prediction.get("logs") or ""))
            if on_progress is not None and progress is not None and progress != last and progress[0] > 0:
                on_progress(ProgressUpdate(step=progress[0], total=progress[1]))
                last = progress
            if cancel is not None and cancel.cancelled:
                await self._cancel(prediction_id)
                raise EngineCancelled("cancelled")
            if time.monotonic() > deadline:
                await self._cancel(prediction_id)
                raise EngineError(f"{self.name} took longer than {self.job_timeout:g} s")
            await asyncio.sleep(self.poll_interval)
            try:
                prediction = await self._call("GET", f"/v1/predictions/{prediction_id}", seconds=10)
                failing_since = None
            except EngineUnavailable:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.lost_after:
                    raise
        if status == "succeeded":
            return prediction
        if status in ("canceled", "aborted"):
            raise EngineCancelled("cancelled")
        error = str(prediction.get("error") or "")
        if "out of memory" in error.lower():
            raise EngineOutOfMemory(f"{self.name} ran out of GPU memory")
        log.info("%s: prediction %s failed: %s", self.name, prediction_id, error[:500])
        raise EngineError(
            f"{self.name} failed: {error.strip().splitlines()[-1][:100] if error.strip() else 'no reason given'}"
        )

    async def _outputs(self, output: Any) -> list[Image.Image]:
        items = output if isinstance(output, list) else [output]
        if not items or not all(isinstance(item, str) and item for item in items):
            raise EngineError(f"{self.name} sent a malformed answer (no output images)")
        images = []
        for item in items:
            if item.startswith("data:"):
                images.append(decode_base64_result(item, self.name))
                continue
            try:
                images.append(await fetch_image(item, policy=self.fetch_policy, resolver=self.resolver))
            except ImageFetchError as error:
                log.warning("%s: output image refused: %s", self.name, error)
                raise EngineError(
                    f"{self.name}: an output image could not be fetched safely ({error})"
                ) from None
        return images

    async def _cancel(self, prediction_id: str) -> None:
        with contextlib.suppress(EngineError):
            await self._call("POST", f"/v1/predictions/{prediction_id}/cancel", seconds=10)

    async def _call(self, method: str, path: str, *, seconds: float = 30, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._http.session().request(
                method, self.base_url + path, timeout=timeout(seconds), **kwargs
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineUnavailable(f"{self.name} cannot be reached") from error
        if status in (200, 201):
            if not isinstance(data, dict):
                raise EngineError(f"{self.name} sent a malformed answer")
            return data
        raise api_error(status, data, self.name)


def progress_of(logs: str) -> tuple[int, int] | None:
    """The last progress a model printed: a tqdm bar's ``n/total`` or a bare percentage (as n/100)."""
    bars = _TQDM.findall(logs)
    if bars:
        _, step, total = bars[-1]
        return (int(step), int(total)) if int(total) > 0 else None
    percents = _PERCENT.findall(logs)
    if percents:
        return min(100, int(percents[-1])), 100
    return None


def api_error(status: int, data: Any, name: str) -> EngineError:
    """Replicate's problem details: ``{"title", "detail", "status"[, "invalid_fields"]}``."""
    detail = str(data.get("detail") or data.get("title") or "") if isinstance(data, dict) else ""
    if status in (401, 403):
        return EngineUnavailable(f"{name} refused our token")
    if status == 404:
        return EngineUnavailable(f"{name}: the model or version does not exist")
    if status == 422:
        fields = data.get("invalid_fields") if isinstance(data, dict) else None
        if isinstance(fields, list) and fields and isinstance(fields[0], dict):
            first = fields[0]
            return EngineError(
                f"{name} rejected {first.get('field', 'an input')}: {str(first.get('description', ''))[:80]}"
            )
        return EngineError(f"{name} rejected the input: {detail[:100]}")
    if status == 429 or status >= 500:
        return EngineUnavailable(f"{name} is unavailable ({status})")
    return EngineError(f"{name} answered {status}: {detail[:100]}")
