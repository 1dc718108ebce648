"""Prompt conditioning for one denoising batch: ``::`` weights through compel, ``--chaos`` per tile.

Every image row of a batch gets its own prompt embedding and its own guidance scale:

- **Weights.** A row without ``::`` weights is encoded by the pipeline's own ``encode_prompt`` (one batched
  call for the batch's distinct texts). A row with weights is encoded by compel (``CompelForSD`` /
  ``CompelForSDXL``, a maintained library) as the blend of its parts' embeddings
  (``engine.weights.to_compel``), cut at the text encoder's window (77 tokens); on SDXL its pooled
  embedding is the plain reading's.
- **Long prompts.** diffusers reads only the first 77 tokens. Here a longer prompt or negative is read as
  A1111 and compel do: in windows of 75 tokens (plus start and end), each encoded on its own, the
  embeddings concatenated (up to ``MAX_PROMPT_WINDOWS``); shorter readings are padded with the empty
  prompt's embedding. All rows of one call need the same length, and padding changes an image a little,
  so the local engine runs jobs of different lengths (``prompt_windows``) in separate calls: a job's
  image does not depend on what it was batched with. SDXL's pooled embedding is the first window's. Only weighted prompts go through compel because its prompt parser
  costs ~20 ms of CPU per text, ten times the whole batched encode. Without compel (or for pipelines
  without ``encode_prompt``) weights are reduced by ``engine.weights.plain_prompts``.
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

MAX_PROMPT_WINDOWS = 4
"""A prompt is read in at most this many windows of the text encoder (4 x 75 = 300 tokens); the rest is cut."""
CHAOS_NOISE_SALT = 0x6368_616F  # "chao": the noise generator's seed differs from the latent noise's
MAX_SEED_MODULUS = 2**32
_MULTIPLY = frozenset({"mul", "__mul__", "__rmul__", "multiply"})


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
        return other * self._scale(other).view(-1, *([1] * (other.dim() - 1)))

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        """The scales as a tensor on ``like``'s device, copied there once per call, not once per step (a copy
        from pageable host memory makes the CPU wait for the GPU)."""
        cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = self.__dict__.setdefault("_scales", {})
        key = (like.device, like.dtype)
        if key not in cache:
            scale = torch.tensor(self.values, dtype=like.dtype)
            if like.device.type == "cuda":  # pinned + non-blocking: even the first copy does not wait
                scale = scale.pin_memory().to(like.device, non_blocking=True)
            cache[key] = scale.to(like.device)
        return cache[key]

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

    plain_prompt: str  # the positive text (``::`` parts reduced)
    plain_negative: str
    weighted: str | None  # the compel blend of the ``::`` parts, None without weights
    guidance: float
    noise: float  # chaos: embedding noise relative to the embedding's standard deviation
    seed: int  # the tile's seed


def rows_for(request: GenerationRequest) -> list[Row]:
    """The ``request.n`` rows of one job, tile by tile."""
    plain_prompt, plain_negative = plain_prompts(
        request.prompt, request.negative_prompt, request.prompt_parts
    )
    weighted = to_compel(request.prompt_parts) if request.prompt_parts else None
    tiles = chaos_for_tiles(request.chaos, request.guidance, request.n)
    return [
        Row(plain_prompt, plain_negative, weighted, tile.guidance, tile.embedding_noise, seed)
        for tile, seed in zip(tiles, tile_seeds(request.seed, request.n), strict=True)
    ]


def guidance_scale(rows: Sequence[Row]) -> float:
    """One float when every row has the same scale, else a ``RowGuidance``."""
    values = {row.guidance for row in rows}
    return rows[0].guidance if len(values) == 1 else RowGuidance([row.guidance for row in rows])


def conditioning_arguments(encoder: PromptEncoder | None, rows: Sequence[Row]) -> dict[str, Any]:
    """Pipeline keyword arguments conditioning ``rows``: their embeddings and guidance.

    ``encoder``: ``prompt_encoder(pipe)``; None gives prompt strings (no weights, no chaos noise).
    Classifier-free guidance off (scale <= 1) leaves the negative embeddings unused; they are made anyway.
    """
    arguments: dict[str, Any] = {"guidance_scale": guidance_scale(rows)}
    if encoder is None:
        arguments["prompt"] = [row.plain_prompt for row in rows]
        arguments["negative_prompt"] = [row.plain_negative for row in rows]
        return arguments
    texts = dict.fromkeys(text for row in rows for text in (row.plain_prompt, row.plain_negative))
    windows = {text: encoder.windows(text) for text in texts}  # each distinct text tokenized once
    # the tiles of a job share their texts: encode each distinct (prompt, negative) pair once, here the
    # first window of each (the whole text when it fits; ``_with_long_prompts`` adds the other windows)
    firsts = [(windows[row.plain_prompt][0], windows[row.plain_negative][0]) for row in rows]
    pairs = list(dict.fromkeys(firsts))
    with torch.no_grad():
        encoded = encoder.pipe.encode_prompt(
            prompt=[p for p, _ in pairs],
            device=encoder.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=[n for _, n in pairs],
        )
    index = torch.tensor([pairs.index(first) for first in firsts])

    def per_row(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.index_select(0, index.to(tensor.device))

    positive, negative = _with_long_prompts(
        encoder, rows, windows, _with_weights(encoder, per_row(encoded[0]), rows), per_row(encoded[1])
    )
    embeds = _with_chaos_noise(positive, rows)
    arguments["prompt_embeds"] = embeds
    arguments["negative_prompt_embeds"] = negative
    if len(encoded) == 4:  # SDXL: pooled embeddings too
        arguments["pooled_prompt_embeds"] = per_row(encoded[2])
        arguments["negative_pooled_prompt_embeds"] = per_row(encoded[3])
    if encoder.zero_empty_negative:
        empty = torch.tensor([not row.plain_negative for row in rows], device=embeds.device)
        for name in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            if name in arguments:
                value = arguments[name]
                arguments[name] = value * (~empty).view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
    return arguments


def _with_weights(encoder: PromptEncoder, embeds: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """Replace the weighted rows' embeddings with compel's blends (each distinct blend encoded once)."""
    blends = list(dict.fromkeys(row.weighted for row in rows if row.weighted))
    if not blends or encoder.compel is None:
        return embeds
    with torch.no_grad():
        blended = encoder.compel(blends).embeds[:, : embeds.shape[1]].to(embeds.device, embeds.dtype)
    embeds = embeds.clone()
    for i, row in enumerate(rows):
        if row.weighted:
            embeds[i] = blended[blends.index(row.weighted)]
    return embeds


def prompt_windows(encoder: PromptEncoder | None, request: GenerationRequest) -> int:
    """How many encoder windows ``request``'s conditioning is long: jobs of one call must agree on it."""
    if encoder is None:
        return 1
    positive, negative = plain_prompts(request.prompt, request.negative_prompt, request.prompt_parts)
    reading = 1 if request.prompt_parts else len(encoder.windows(positive))  # weighted: cut to one
    return max(reading, len(encoder.windows(negative)))


def _with_long_prompts(
    encoder: PromptEncoder,
    rows: Sequence[Row],
    windows: dict[str, list[str]],
    positive: torch.Tensor,
    negative: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the windows after the first (which ``encode_prompt`` gave) to long rows, pad the others."""
    positive_rest = [[] if row.weighted else windows[row.plain_prompt][1:] for row in rows]
    negative_rest = [windows[row.plain_negative][1:] for row in rows]
    count = 1 + max(len(rest) for rest in positive_rest + negative_rest)
    if count == 1:
        return positive, negative
    pieces = list(dict.fromkeys(["", *(text for rest in positive_rest + negative_rest for text in rest)]))
    with torch.no_grad():
        encoded = encoder.pipe.encode_prompt(
            prompt=pieces, device=encoder.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )[0].to(positive.device, positive.dtype)

    def extended(first: torch.Tensor, rest: list[str]) -> torch.Tensor:
        chunks = [first, *(encoded[pieces.index(text)] for text in rest)]
        chunks += [encoded[0]] * (count - len(chunks))  # the empty prompt, as A1111 and compel pad
        return torch.cat(chunks)

    return (
        torch.stack([extended(row, rest) for row, rest in zip(positive, positive_rest, strict=True)]),
        torch.stack([extended(row, rest) for row, rest in zip(negative, negative_rest, strict=True)]),
    )


def _with_chaos_noise(embeds: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    if not any(row.noise for row in rows):
        return embeds
    embeds = embeds.clone()
    for index, row in enumerate(rows):
        if row.noise <= 0:
            continue
        generator = torch.Generator("cpu").manual_seed((row.seed + CHAOS_NOISE_SALT) % MAX_SEED_MODULUS)
        target = embeds[index]
        noise = torch.randn(target.shape, generator=generator, dtype=torch.float32)
        scale = row.noise * target.float().std()
        embeds[index] = (target.float() + noise.to(target.device) * scale).to(embeds.dtype)
    return embeds


@dataclass(frozen=True)
class PromptEncoder:
    """How one pipeline's prompts become embeddings: its own encoder, compel for weights."""

    pipe: Any  # a Stable Diffusion (1.x/2.x) or SDXL pipeline: its ``encode_prompt`` reads plain texts
    device: str
    compel: Any  # CompelForSD / CompelForSDXL for weighted prompts; None without compel
    zero_empty_negative: bool  # SDXL's force_zeros_for_empty_prompt: "" is a zero embedding, not encoded

    def windows(self, text: str) -> list[str]:
        """``text`` in the pieces the encoder reads whole: itself when it fits one window (75 tokens), else
        the text of each window of its tokens, up to ``MAX_PROMPT_WINDOWS``.

        A window's text is decoded from its tokens, and decoding is not always undone by encoding (a word
        or a multi-byte character cut at the edge): a window ends a token earlier until its text encodes
        into the window whole and no character is cut; the rest starts the next window.
        """
        tokenizer = self.pipe.tokenizer
        size = tokenizer.model_max_length - 2  # the start and end tokens take two places

        def tokens(piece: str) -> list[int]:
            return tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids

        ids = tokens(text)
        if len(ids) <= size:
            return [text]
        pieces: list[str] = []
        start = 0
        while start < len(ids) and len(pieces) < MAX_PROMPT_WINDOWS:
            end = min(start + size, len(ids))
            piece = tokenizer.decode(ids[start:end])
            while end - start > 1 and (
                len(tokens(piece)) > size or ("\ufffd" in piece and "\ufffd" not in text)
            ):
                end -= 1
                piece = tokenizer.decode(ids[start:end])
            pieces.append(piece)
            start = end
        if start < len(ids):
            log.info("a prompt of %d tokens is read up to token %d", len(ids), start)
        return pieces


def prompt_encoder(pipe: Any) -> PromptEncoder | None:
    """The encoder for ``pipe`` (SD 1.x/2.x or SDXL); None for pipelines without a text encoder of that kind."""
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is None or getattr(pipe, "tokenizer", None) is None or not hasattr(pipe, "encode_prompt"):
        return None
    device = str(text_encoder.device)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    zeros = sdxl and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    try:
        from compel import CompelForSD, CompelForSDXL
    except ImportError:  # the local extra installs it; a hand-made install may not have it
        log.warning("compel is not installed: :: weights fall back to plain prompts")
        return PromptEncoder(pipe, device, None, zeros)
    compel = CompelForSDXL(pipe, device=device) if sdxl else CompelForSD(pipe, device=device)
    return PromptEncoder(pipe, device, compel, zeros)
