"""The optional safety checker: diffusers' ``StableDiffusionSafetyChecker`` run on a job's finished images.

Off by default. ``ENGINE_SAFETY_CHECKER`` (or the engine's ``safety_checker=``) names a checker: a hub id
such as ``CompVis/stable-diffusion-safety-checker`` (offline: it must be in the local Hugging Face cache),
a local folder holding its ``config.json`` + weights (+ ``preprocessor_config.json``), or a diffusers
pipeline folder with ``safety_checker/`` and ``feature_extractor/`` subfolders (an SD1.5 download).

The checker is a CLIP vision tower whose image embedding is compared (cosine) with 17 concept embeddings
and 3 "special care" embeddings; an image whose similarity to a concept is above that concept's threshold
(``concept_embeds_weights``) is flagged (``has_nsfw_concept``). ``SafetyChecker.flags`` returns that verdict
per image. The engine refuses a job with any flagged image (``EngineFlagged``): nothing is returned, so
nothing is posted or charged. Cost: one CLIP ViT-L/14 pass at 224² per image (~0.06 TFLOP, under 2% of
one SD1.5 step at 512²).

Loading failures become an ``EngineError`` whose message is safe to show; the detail is logged.

Previews: the checker looks at finished images only, so with a checker on, every progress preview is
*obscured* (``obscure_preview``: shrunk to a few pixels a side and blurred back up) before it leaves the
engine. Users still see the job move and its colours settle, but no detail the checker would have
refused. (Checking every preview would cost a CLIP pass per preview and could still leak the steps
between two checks; previews shown only to the requester cannot be made for channel messages.) A
flagged job's message then loses its last preview when the refusal replaces it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.base import EngineError
from engine.loading import _looks_like_path

log = logging.getLogger(__name__)

OFF_VALUES = ("", "off", "none")
"""Setting values that mean "no safety checker"."""

_CHECKER_SUBFOLDER = "safety_checker"
_EXTRACTOR_SUBFOLDER = "feature_extractor"


def safety_checker_source(value: Any) -> Any:
    """A setting value or a constructor argument → what to load, or None when the checker is off."""
    if value is None:
        return None
    if isinstance(value, str | Path) and str(value).strip().lower() in OFF_VALUES:
        return None
    return value.strip() if isinstance(value, str) else value


OBSCURED_SIDE = 8
"""Pixels on the long side a preview is shrunk to when the safety checker is on."""


def obscure_preview(jpeg: bytes, *, side: int = OBSCURED_SIDE) -> bytes:
    """A preview with no detail left: shrunk to ``side`` pixels on its long side, stretched back to its size.

    JPEG draft mode decodes at 1/8 scale when it can, so this costs a few milliseconds (see the docstring
    of ``engine.previews`` for the encode cost it adds to).
    """
    with Image.open(io.BytesIO(jpeg)) as opened:
        size = opened.size
        opened.draft("RGB", (side, side))  # JPEG: decode at a reduced scale; the detail is dropped anyway
        image = opened.convert("RGB")
    scale = side / max(size)
    small = image.resize(
        (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.Resampling.BOX
    )
    blurred = small.resize(size, Image.Resampling.BILINEAR)  # smooth ramps between 8 px: no edges
    buffer = io.BytesIO()
    blurred.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


class _DropBlackImageNotice(logging.Filter):
    """diffusers warns "A black image will be returned instead" on every flagged image; we return no image."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "black image" not in record.getMessage()


_DIFFUSERS_CHECKER_LOG = logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker")


class SafetyChecker:
    """A ``StableDiffusionSafetyChecker`` and the ``CLIPImageProcessor`` that prepares its input."""

    def __init__(self, checker: Any, feature_extractor: Any, *, source: str = "") -> None:
        if not any(isinstance(f, _DropBlackImageNotice) for f in _DIFFUSERS_CHECKER_LOG.filters):
            _DIFFUSERS_CHECKER_LOG.addFilter(_DropBlackImageNotice())
        self.checker = checker.eval()
        self.checker.requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.source = source or type(checker).__name__

    def __repr__(self) -> str:
        return f"SafetyChecker({self.source!r})"

    @property
    def device(self) -> torch.device:
        return next(self.checker.parameters()).device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> SafetyChecker:
        """Move the checker (in place) to ``device`` / ``dtype``; returns ``self``."""
        if dtype is not None:
            self.checker.to(device=device, dtype=dtype)
        else:
            self.checker.to(device=device)
        return self

    def flags(self, images: list[Image.Image]) -> list[bool]:
        """Which of ``images`` the checker flags (its ``has_nsfw_concept``), in order."""
        if not images:
            return []
        parameter = next(self.checker.parameters())
        pixels = self.feature_extractor(
            images=[image.convert("RGB") for image in images], return_tensors="pt"
        ).pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        # The checker blacks out flagged entries of ``images``; we never post a flagged job, so it gets
        # placeholders instead of copies of our images.
        placeholders = [np.zeros((1, 1, 3), dtype=np.float32) for _ in images]
        with torch.no_grad():
            _, has_nsfw_concept = self.checker(clip_input=pixels, images=placeholders)
        return [bool(flag) for flag in has_nsfw_concept]


def load_safety_checker(
    source: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> SafetyChecker:
    """A ``SafetyChecker`` on ``device``: ``source`` is one (moved there), or a folder / hub id to load."""
    if isinstance(source, SafetyChecker):
        return source.to(device, dtype)
    text = str(source)
    try:
        checker = _load(text).to(device, dtype)
    except EngineError:
        raise
    except Exception as error:  # transformers raises many kinds; the user gets one sentence
        log.exception("safety checker load failed source=%s", text)
        raise EngineError(f"could not load the safety checker {text!r}: {type(error).__name__}") from error
    log.info("safety checker loaded source=%s device=%s dtype=%s", text, device, dtype)
    return checker


def _load(source: str) -> SafetyChecker:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / _CHECKER_SUBFOLDER / "config.json").is_file():  # a whole diffusers pipeline folder
            return _from_pretrained(source, str(path), _CHECKER_SUBFOLDER, _EXTRACTOR_SUBFOLDER)
        if not (path / "config.json").is_file():
            raise EngineError(f"{path} is not a safety checker folder (no config.json)")
        return _from_pretrained(source, str(path), None, None)
    if path.exists() or _looks_like_path(source):
        raise EngineError(f"safety checker folder not found: {source}")
    try:
        return _from_pretrained(source, source, None, None)
    except OSError as error:
        log.warning("safety checker hub load failed repo=%s error=%r", source, error)
        raise EngineError(
            f"safety checker {source!r} could not be found locally or downloaded from the Hugging Face Hub"
        ) from error


def _from_pretrained(
    source: str, location: str, checker_folder: str | None, extractor_folder: str | None
) -> SafetyChecker:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    sub: dict[str, Any] = {"subfolder": checker_folder} if checker_folder else {}
    checker = StableDiffusionSafetyChecker.from_pretrained(location, **sub)
    sub = {"subfolder": extractor_folder} if extractor_folder else {}
    try:
        extractor = CLIPImageProcessor.from_pretrained(location, **sub)
    except OSError:  # no preprocessor_config.json: CLIP's defaults (224², CLIP mean/std) fit the real checker
        log.info("safety checker %s has no preprocessor config; using CLIP's defaults", source)
        extractor = CLIPImageProcessor()
    return SafetyChecker(checker, extractor, source=source)
