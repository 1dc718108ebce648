"""Load a diffusers text-to-image pipeline from a hub id, a diffusers folder or a single checkpoint file.

Every failure becomes an ``EngineError`` whose message is safe to show to a user; the detail is logged.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from engine.base import EngineError

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_SDXL_KEY_PREFIX = "conditioner.embedders.1."


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when a CUDA GPU is available, else ``"cpu"``; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} was requested but no CUDA GPU is available")
    return device


def default_dtype(device: str) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (CPU half precision is slow and lossy)."""
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_pipeline(
    source: str,
    device: str,
    *,
    dtype: torch.dtype | None = None,
    config_folder: str | None = None,
) -> Any:
    """A text-to-image pipeline on ``device``, progress bar off, no safety checker.

    ``source``: a local diffusers folder (with ``model_index.json``), a single ``.safetensors``/``.ckpt``
    file (``config_folder`` names a diffusers folder with the matching configs; without it diffusers
    needs the hub to find them), or a Hugging Face hub id (downloaded or taken from the local cache).
    """
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    path = Path(source).expanduser()
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; older releases (>= 0.32 supported) know only torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = _load(source, path, dtype, config_folder)
        pipe = pipe.to(device)
    except EngineError:
        raise
    except Exception as error:  # diffusers/transformers raise many kinds; the user gets one sentence
        log.exception("model load failed source=%s", source)
        raise EngineError(f"could not load model {source!r}: {type(error).__name__}") from error
    pipe.set_progress_bar_config(disable=True)
    log.info(
        "model loaded source=%s pipeline=%s device=%s dtype=%s", source, type(pipe).__name__, device, dtype
    )
    return pipe


def _load(source: str, path: Path, dtype: torch.dtype, config_folder: str | None) -> Any:
    if path.is_dir():
        return _from_folder(path, dtype)
    if path.is_file():
        return _from_single_file(path, dtype, config_folder)
    if _looks_like_path(source):
        raise EngineError(f"model file or folder not found: {source}")
    return _from_hub(source, dtype)


def img2img_pipeline(pipe: Any) -> Any:
    """The image-to-image pipeline sharing ``pipe``'s components (no extra memory)."""
    from diffusers import AutoPipelineForImage2Image

    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return img2img


def model_family(pipe: Any) -> str:
    """``"sdxl"`` for SDXL pipelines, ``"sd1"`` otherwise (the preview matrix to use)."""
    return "sdxl" if "XL" in type(pipe).__name__ else "sd1"


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", ".", "~"))
        or source.lower().endswith(SINGLE_FILE_SUFFIXES)
        or source.count("/") > 1
        or "\\" in source
    )


def _no_safety(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "safety_checker": None, "requires_safety_checker": False}


def _from_folder(path: Path, dtype: torch.dtype) -> Any:
    from diffusers import AutoPipelineForText2Image

    if not (path / "model_index.json").is_file():
        raise EngineError(f"{path} is not a diffusers model folder (no model_index.json)")
    return AutoPipelineForText2Image.from_pretrained(str(path), **_no_safety({"torch_dtype": dtype}))


def _from_hub(repo_id: str, dtype: torch.dtype) -> Any:
    from diffusers import AutoPipelineForText2Image

    try:
        return AutoPipelineForText2Image.from_pretrained(repo_id, **_no_safety({"torch_dtype": dtype}))
    except (OSError, ValueError) as error:
        log.warning("hub load failed repo=%s error=%r", repo_id, error)
        raise EngineError(
            f"model {repo_id!r} could not be found locally or downloaded from the Hugging Face Hub"
        ) from error


def _from_single_file(path: Path, dtype: torch.dtype, config_folder: str | None) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise EngineError(f"{path.name} is not a model checkpoint (.safetensors or .ckpt)")
    cls = StableDiffusionXLPipeline if _is_sdxl_file(path) else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if config_folder is not None:
        kwargs["config"] = str(config_folder)
    if cls is StableDiffusionPipeline:
        kwargs = _no_safety(kwargs)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except OSError as error:
        log.warning("single-file load failed path=%s error=%r", path, error)
        hint = "" if config_folder else " (offline, pass a config folder with the model's diffusers configs)"
        raise EngineError(
            f"could not load checkpoint {path.name}: bad file or missing configs{hint}"
        ) from error


def _is_sdxl_file(path: Path) -> bool:
    """True when a ``.safetensors`` file holds SDXL's second text encoder; ``.ckpt`` files count as SD1/2."""
    if path.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(key.startswith(_SDXL_KEY_PREFIX) for key in handle.keys())  # noqa: SIM118
    except Exception as error:
        log.warning("unreadable safetensors path=%s error=%r", path, error)
        raise EngineError(f"{path.name} is not a readable .safetensors checkpoint") from error
