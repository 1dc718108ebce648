"""Prompt conditioning for one denoising batch: ``::`` weights through compel, ``--chaos`` per tile.

Every image row of a batch gets its own prompt embedding and its own guidance scale:

- **Weights.** Prompts are encoded by compel (``CompelForSD`` / ``CompelForSDXL``, a maintained library),
  so ``a::2 b::-0.5`` becomes compel's blend of the parts' embeddings (``engine.weights.to_compel``).
  Plain prompts go through the same encoder (escaped), so every row of a batch is encoded alike; compel
  does not cut prompts at 77 tokens, it encodes them in 77-token chunks. Pipelines compel does not cover
  get the prompt strings, with the ``::`` parts reduced by ``engine.weights.plain_prompts``.
- **Chaos.** ``engine.chaos.chaos_for_tiles`` gives each tile a guidance scale and an embedding noise;
  the noise is added to the tile's positive embedding from a CPU generator seeded with the tile's seed.
- **Per-row guidance.** diffusers takes one ``guidance_scale`` for the batch. ``RowGuidance`` is a float
  (the largest scale, so the pipeline's ``guidance_scale > 1`` checks see classifier-free guidance on)
  whose product with the ``(text - uncond)`` noise tensor scales each row by its own value. This relies
  on the Stable Diffusion pipelines computing ``uncond + guidance_scale * (text - uncond)``;
  ``tests/engine/test_conditioning.py`` checks that a batch of mixed scales equals separate runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.base import GenerationRequest
from engine.chaos import chaos_for_tiles
from engine.seeds import tile_seeds
from engine.weights import plain_prompts, to_compel

log = logging.getLogger(__name__)

CHAOS_NOISE_SALT = 0x6368_616F  # "chao": the noise generator's seed differs from the latent noise's
MAX_SEED_MODULUS = 2**32
_MULTIPLY = frozenset({"mul", "__mul__", "__rmul__", "multiply"})
NOISE_BLOCK_TOKENS = 77  # CLIP's context: compel pads long prompts in blocks of this many tokens


class RowGuidance(float):
    """A guidance scale per batch row, usable where diffusers expects one float (see the module doc)."""

    values: tuple[float, ...]

    def __new__(cls, values: Sequence[float]) -> RowGuidance:
        scale = super().__new__(cls, max(values))
        scale.values = tuple(float(v) for v in values)
        return scale

    def __mul__(self, other: Any) -> Any:
        if not isinstance(other, torch.Tensor):
            return float(self) * other
        if other.dim() == 0 or other.shape[0] != len(self.values):
            raise RuntimeError(
                f"per-row guidance for {len(self.values)} rows met a tensor of shape {tuple(other.shape)}"
            )
        scale = torch.tensor(self.values, dtype=other.dtype, device=other.device)
        return other * scale.view(-1, *([1] * (other.dim() - 1)))

    __rmul__ = __mul__

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """``tensor * scale`` (torch asks us first) scales per row too; any other torch use sees the float."""
        if getattr(func, "__name__", "") in _MULTIPLY and len(args) == 2 and not kwargs:
            scale, other = (args[1], args[0]) if isinstance(args[1], RowGuidance) else args
            if isinstance(scale, RowGuidance):
                return scale * other
        plain = tuple(float(a) if isinstance(a, RowGuidance) else a for a in args)
        return func(*plain, **(kwargs or {}))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RowGuidance, (self.values,))


@dataclass(frozen=True)
class Row:
    """One image of a batch: what it is conditioned on."""

    prompt: str  # compel syntax (weighted blend or escaped plain text)
    negative: str  # compel syntax (escaped)
    plain_prompt: str  # for pipelines without compel
    plain_negative: str
    guidance: float
    noise: float  # chaos: embedding noise relative to the embedding's standard deviation
    seed: int  # the tile's seed


def rows_for(request: GenerationRequest) -> list[Row]:
    """The ``request.n`` rows of one job, tile by tile."""
    plain_prompt, plain_negative = plain_prompts(
        request.prompt, request.negative_prompt, request.prompt_parts
    )
    prompt = to_compel(request.prompt_parts or [(request.prompt, 1.0)])
    negative = to_compel([(request.negative_prompt, 1.0)])
    tiles = chaos_for_tiles(request.chaos, request.guidance, request.n)
    return [
        Row(prompt, negative, plain_prompt, plain_negative, tile.guidance, tile.embedding_noise, seed)
        for tile, seed in zip(tiles, tile_seeds(request.seed, request.n), strict=True)
    ]


def guidance_scale(rows: Sequence[Row]) -> float:
    """One float when every row has the same scale, else a ``RowGuidance``."""
    values = {row.guidance for row in rows}
    return rows[0].guidance if len(values) == 1 else RowGuidance([row.guidance for row in rows])


def conditioning_arguments(encoder: PromptEncoder | None, rows: Sequence[Row]) -> dict[str, Any]:
    """Pipeline keyword arguments conditioning ``rows``: their embeddings and guidance.

    ``encoder``: ``prompt_encoder(pipe)``; None gives prompt strings (no weights, no chaos noise).
    """
    arguments: dict[str, Any] = {"guidance_scale": guidance_scale(rows)}
    if encoder is None:
        arguments["prompt"] = [row.plain_prompt for row in rows]
        arguments["negative_prompt"] = [row.plain_negative for row in rows]
        return arguments
    # the tiles of a job share their texts: encode each distinct (prompt, negative) pair once
    pairs = list(dict.fromkeys((row.prompt, row.negative) for row in rows))
    with torch.no_grad():
        conditioning = encoder.compel([p for p, _ in pairs], negative_prompt=[n for _, n in pairs])
    index = torch.tensor([pairs.index((row.prompt, row.negative)) for row in rows])

    def per_row(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.index_select(0, index.to(tensor.device))

    embeds = _with_chaos_noise(per_row(conditioning.embeds), rows)
    arguments["prompt_embeds"] = embeds
    arguments["negative_prompt_embeds"] = per_row(conditioning.negative_embeds).to(embeds.dtype)
    if conditioning.pooled_embeds is not None:
        arguments["pooled_prompt_embeds"] = per_row(conditioning.pooled_embeds).to(embeds.dtype)
        arguments["negative_pooled_prompt_embeds"] = per_row(conditioning.negative_pooled_embeds).to(
            embeds.dtype
        )
    if encoder.zero_empty_negative:
        empty = torch.tensor([not row.negative for row in rows], device=embeds.device)
        for name in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            if name in arguments:
                value = arguments[name]
                arguments[name] = value * (~empty).view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
    return arguments


def _with_chaos_noise(embeds: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    if not any(row.noise for row in rows):
        return embeds
    embeds = embeds.clone()
    for index, row in enumerate(rows):
        if row.noise <= 0:
            continue
        generator = torch.Generator("cpu").manual_seed((row.seed + CHAOS_NOISE_SALT) % MAX_SEED_MODULUS)
        target = embeds[index]
        noise = _block_noise(target.shape, generator)
        scale = row.noise * target.float().std()
        embeds[index] = (target.float() + noise.to(target.device) * scale).to(embeds.dtype)
    return embeds


def _block_noise(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Noise drawn one 77-token block at a time, so a row's first tokens get the same noise however far
    the batch's longest prompt padded it."""
    tokens, width = shape
    blocks = [
        torch.randn((NOISE_BLOCK_TOKENS, width), generator=generator, dtype=torch.float32)
        for _ in range(-(-tokens // NOISE_BLOCK_TOKENS))
    ]
    return torch.cat(blocks)[:tokens]


@dataclass(frozen=True)
class PromptEncoder:
    """compel's wrapper for one pipeline, and how that pipeline treats an empty negative prompt."""

    compel: Any  # CompelForSD / CompelForSDXL
    zero_empty_negative: bool  # SDXL's force_zeros_for_empty_prompt: "" is a zero embedding, not encoded


def prompt_encoder(pipe: Any) -> PromptEncoder | None:
    """The encoder for ``pipe`` (SD 1.x/2.x or SDXL); None for other pipelines or without compel."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        return None
    try:
        from compel import CompelForSD, CompelForSDXL
    except ImportError:  # the local extra installs it; a hand-made install may not have it
        log.warning(
            "compel is not installed: :: weights fall back to plain prompts, --chaos to guidance only"
        )
        return None
    device = str(pipe.text_encoder.device)
    if getattr(pipe, "text_encoder_2", None) is not None:
        zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        return PromptEncoder(CompelForSDXL(pipe, device=device), zero_empty_negative=zeros)
    return PromptEncoder(CompelForSD(pipe, device=device), zero_empty_negative=False)
