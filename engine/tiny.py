"""A tiny random-weight Stable Diffusion 1.x pipeline, built offline, for tests and benchmarks.

Its images are noise, but every code path a real SD1.5 checkpoint takes is the real one:
tokenizer (a real ``CLIPTokenizer`` loaded from files), CLIP text encoder, a UNet with cross-attention,
a 4-level VAE with scale factor 8 (so a 64x64 image is an 8x8 latent, as in SD), an
``EulerDiscreteScheduler`` with the SD1.5 beta schedule (Euler because its step returns the predicted x0,
which the previews use), and no safety checker.

``save_tiny_single_file`` writes the same weights as one ``.safetensors`` file in the original
LDM (CompVis / A1111) key layout, so ``from_single_file`` runs its real key conversion.
Building takes ~0.1 s on 2 CPU cores. ``build_tiny_sdxl_pipeline`` is the same idea for the SDXL
architecture (two text encoders, pooled embeddings, size/crop conditioning).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TEXT_HIDDEN = 32
UNET_CHANNELS = (32, 64)
UNET_LAYERS_PER_BLOCK = 2
VAE_CHANNELS = (8, 16, 32, 32)
VAE_LAYERS_PER_BLOCK = 2

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MERGES = ["t h", "th e</w>", "a n", "an d</w>", "c a", "ca t</w>", "o n</w>", "i n", "in g</w>"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table (256 entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_tiny_tokenizer(folder: Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json of a small but real CLIP BPE tokenizer.

    Every byte (and byte + ``</w>``) is in the vocabulary, so any prompt tokenizes without unknowns.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(m.split()) for m in _MERGES]
    vocab_list += [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    config = {
        "model_max_length": 77,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "pad_token": _EOS,
        "unk_token": _EOS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _tiny_tokenizer() -> CLIPTokenizer:
    # transformers 5.x ignores vocab_file=/merges_file= kwargs; from_pretrained(folder) is the reliable way.
    with tempfile.TemporaryDirectory(prefix="tiny-tokenizer-") as tmp:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(Path(tmp)))


def _tiny_unet(**architecture: Any) -> Any:
    """The tiny UNet; ``architecture`` adds the family's own options (cross-attention width, SDXL's extras)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=UNET_LAYERS_PER_BLOCK,
        # Cross-attention on the low-resolution level only (as in diffusers' own test UNet): at 512² a
        # full-resolution attention over 4,096 tokens costs seconds per step on a CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        **architecture,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=VAE_LAYERS_PER_BLOCK,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _tiny_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_tiny_pipeline(folder: Path | None = None, *, seed: int = 0) -> StableDiffusionPipeline:
    """A complete SD1.x-architecture pipeline with random weights (deterministic for a given ``seed``).

    ``folder``: where to write the tokenizer files (kept); a temporary folder when None.
    """
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder)) if folder else _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8)
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
    scheduler = _tiny_scheduler()
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(*, seed: int = 0) -> Any:
    """A tiny random-weight SDXL-architecture pipeline: two CLIP text encoders (the second with a projection,
    whose pooled output and the size/crop ids feed the UNet's ``text_time`` embedding), concatenated
    penultimate hidden states as cross-attention context, and the tiny VAE. Deterministic for ``seed``.
    """
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = _tiny_tokenizer(), _tiny_tokenizer()
    time_embed = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(
            cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed,
            projection_class_embeddings_input_dim=6 * time_embed + TEXT_HIDDEN,
        )
        vae = _tiny_vae()
        config = _tiny_text_config(tokenizer)
        text_encoder = CLIPTextModel(config)
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**{**config.to_dict(), "projection_dim": TEXT_HIDDEN})
        )
    pipe: Any = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet.eval(),
        scheduler=_tiny_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_taesd(*, seed: int = 0) -> Any:
    """A tiny random-weight ``AutoencoderTiny`` (TAESD architecture, 8 channels, one block per level).

    It decodes the tiny pipeline's 4-channel latents x8, like the real TAESD; built offline in milliseconds.
    """
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        taesd: Any = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    return taesd.eval()


def save_tiny_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny pipeline as a diffusers folder (``model_index.json`` + components); returns ``folder``."""
    folder = Path(folder)
    pipe: Any = build_tiny_pipeline(seed=seed)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_single_file(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny pipeline's UNet, VAE and text encoder as one LDM-layout ``.safetensors`` file.

    Loading it needs ``config=<a tiny diffusers folder>`` (see ``save_tiny_pipeline``) because the
    architecture is not a real SD one diffusers could infer from the keys.
    """
    from safetensors.torch import save_file

    pipe = build_tiny_pipeline(seed=seed)
    state = to_ldm_state_dict(pipe)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def to_ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """Convert a diffusers SD1.x pipeline's weights to the original LDM checkpoint key layout."""
    unet = {
        "model.diffusion_model." + k: v
        for k, v in _rename(pipe.unet.state_dict(), _unet_prefix_map(pipe.unet.config)).items()
    }
    vae = {
        "first_stage_model." + k: v for k, v in _vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()
    }
    text = {
        # Real SD1 files say ``text_model.``; transformers >= 5.6 flattened CLIPTextModel and dropped it.
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in pipe.text_encoder.state_dict().items()
    }
    return {**unet, **vae, **text}


def _rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Replace the first matching diffusers prefix of each key with its LDM prefix."""
    out = {}
    for key, value in state.items():
        for diffusers_prefix, ldm_prefix in prefixes:
            if key.startswith(diffusers_prefix):
                key = ldm_prefix + key[len(diffusers_prefix) :]
                break
        out[key] = value
    return out


_UNET_RESNET_PARTS = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _unet_prefix_map(config: object) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for a UNet of any depth; resnet internals included."""
    levels = len(config.block_out_channels)  # type: ignore[attr-defined]
    per = config.layers_per_block  # type: ignore[attr-defined]
    blocks: list[tuple[str, str, bool]] = [  # (diffusers, ldm, is_resnet)
        ("time_embedding.linear_1.", "time_embed.0.", False),
        ("time_embedding.linear_2.", "time_embed.2.", False),
        ("conv_in.", "input_blocks.0.0.", False),
        ("conv_norm_out.", "out.0.", False),
        ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    up_has_attention = ["CrossAttn" in t for t in config.up_block_types]  # type: ignore[attr-defined]
    for i in range(levels):
        for j in range(per):
            ldm = f"input_blocks.{(per + 1) * i + j + 1}"
            blocks.append((f"down_blocks.{i}.resnets.{j}.", f"{ldm}.0.", True))
            blocks.append((f"down_blocks.{i}.attentions.{j}.", f"{ldm}.1.", False))
        if i < levels - 1:
            blocks.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op.", False)
            )
        for j in range(per + 1):
            ldm = f"output_blocks.{(per + 1) * i + j}"
            blocks.append((f"up_blocks.{i}.resnets.{j}.", f"{ldm}.0.", True))
            blocks.append((f"up_blocks.{i}.attentions.{j}.", f"{ldm}.1.", False))
        if i < levels - 1:
            index = 2 if up_has_attention[i] else 1
            blocks.append(
                (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{index}.", False)
            )
    prefixes = []
    for diffusers_prefix, ldm_prefix, is_resnet in blocks:
        if is_resnet:
            prefixes += [(diffusers_prefix + d, ldm_prefix + s) for d, s in _UNET_RESNET_PARTS]
        prefixes.append((diffusers_prefix, ldm_prefix))
    return prefixes


def _vae_to_ldm(state: dict[str, torch.Tensor], config: object) -> dict[str, torch.Tensor]:
    levels = len(config.block_out_channels)  # type: ignore[attr-defined]
    per = config.layers_per_block  # type: ignore[attr-defined]
    prefixes: list[tuple[str, str]] = []
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
            (f"{part}.mid_block.attentions.0.group_norm.", f"{part}.mid.attn_1.norm."),
            (f"{part}.mid_block.attentions.0.to_q.", f"{part}.mid.attn_1.q."),
            (f"{part}.mid_block.attentions.0.to_k.", f"{part}.mid.attn_1.k."),
            (f"{part}.mid_block.attentions.0.to_v.", f"{part}.mid.attn_1.v."),
            (f"{part}.mid_block.attentions.0.to_out.0.", f"{part}.mid.attn_1.proj_out."),
            (f"{part}.conv_norm_out.", f"{part}.norm_out."),
        ]
    for i in range(levels):
        for j in range(per):
            prefixes.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        for j in range(per + 1):
            prefixes.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.")
            )
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."))
    out = _rename(state, prefixes)
    renamed = {}
    for key, value in out.items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # LDM stores the attention projections as 1x1 convs
        renamed[key] = value
    return renamed


# -- a tiny safety checker ---------------------------------------------------------------------------

SAFETY_IMAGE_SIZE = 32
SAFETY_HIDDEN = 32
SAFETY_PROJECTION = 16
NEVER_FLAG = 2.0
"""A concept threshold above any cosine similarity (which is at most 1): nothing is flagged."""
ALWAYS_FLAG = -2.0
"""A concept threshold below any cosine similarity (at least -1): every image is flagged."""


def build_tiny_safety_checker(*, flag: bool = False, seed: int = 0) -> Any:
    """A tiny random-weight ``StableDiffusionSafetyChecker`` (a 2-layer CLIP vision tower on 32² input) with
    its ``CLIPImageProcessor``, wrapped as an ``engine.safety.SafetyChecker``; built offline in milliseconds.

    The outcome is set through the checker's own thresholds, so its real code decides: ``flag=True`` puts
    every concept threshold (``concept_embeds_weights``) below any possible similarity (every image is
    flagged), ``flag=False`` puts every threshold above it (nothing is flagged). ``aim_safety_checker``
    makes it flag chosen images only.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from engine.safety import SafetyChecker

    config = CLIPConfig(
        text_config={  # unused by the checker, but part of its config: kept tiny
            "vocab_size": 64,
            "hidden_size": SAFETY_HIDDEN,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": SAFETY_HIDDEN,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": SAFETY_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=SAFETY_PROJECTION,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        checker: Any = StableDiffusionSafetyChecker(config)
        with torch.no_grad():
            checker.concept_embeds.normal_()
            checker.special_care_embeds.normal_()
    set_safety_thresholds(checker, ALWAYS_FLAG if flag else NEVER_FLAG)
    extractor = CLIPImageProcessor(
        size={"shortest_edge": SAFETY_IMAGE_SIZE},
        crop_size={"height": SAFETY_IMAGE_SIZE, "width": SAFETY_IMAGE_SIZE},
    )
    return SafetyChecker(checker, extractor, source="tiny")


def set_safety_thresholds(checker: Any, concept: float, special_care: float = NEVER_FLAG) -> None:
    """Set every concept threshold to ``concept`` and every special-care threshold to ``special_care``
    (on a ``StableDiffusionSafetyChecker`` or an ``engine.safety.SafetyChecker``)."""
    module = getattr(checker, "checker", checker)
    with torch.no_grad():
        module.concept_embeds_weights.fill_(concept)
        module.special_care_embeds_weights.fill_(special_care)


def save_tiny_safety_checker(folder: Path, *, flag: bool = False, seed: int = 0) -> Path:
    """Save a tiny safety checker like ``CompVis/stable-diffusion-safety-checker`` is laid out: ``config.json``,
    the weights and ``preprocessor_config.json`` in one folder; returns ``folder``."""
    folder = Path(folder)
    wrapper = build_tiny_safety_checker(flag=flag, seed=seed)
    wrapper.checker.save_pretrained(folder)
    wrapper.feature_extractor.save_pretrained(folder)
    return folder


def aim_safety_checker(checker: Any, flagged: list[Any], clean: list[Any]) -> float:
    """Make an ``engine.safety.SafetyChecker`` flag the images of ``flagged`` and none of ``clean``.

    Concept 0 becomes the direction ``c`` (in the checker's own embedding space) with ``<e, c> = +1`` for
    the unit embedding ``e`` of every ``flagged`` image and ``-1`` for every ``clean`` one (the minimum-norm
    solution), its threshold 0; every other concept and special-care threshold is set out of reach. So the
    real checker sees a cosine of ``+1/|c|`` or ``-1/|c|``, and flags exactly ``flagged`` as long as that
    margin stays above 0.0005 (the checker rounds its scores to 3 decimals). Returns the margin, ``1/|c|``;
    raises ``ValueError`` if the images cannot be told apart this way.
    """
    module = checker.checker
    pixels = checker.feature_extractor(
        images=[i.convert("RGB") for i in flagged + clean], return_tensors="pt"
    )
    parameter = next(module.parameters())
    with torch.no_grad():
        pooled = module.vision_model(pixels.pixel_values.to(parameter.device, parameter.dtype))[1]
        embeds = torch.nn.functional.normalize(module.visual_projection(pooled).double())
    targets = torch.tensor([1.0] * len(flagged) + [-1.0] * len(clean), dtype=torch.float64)
    direction = torch.linalg.pinv(embeds) @ targets
    if not torch.allclose(embeds @ direction, targets, atol=1e-6):
        raise ValueError("the flagged and clean images have the same embeddings; they cannot be told apart")
    set_safety_thresholds(module, NEVER_FLAG)
    with torch.no_grad():
        module.concept_embeds[0] = direction.to(module.concept_embeds.dtype)
        module.concept_embeds_weights[0] = 0.0
    return float(1 / direction.norm())
