"""Engine throughput: images/s for N queued compatible jobs with dynamic batching on vs off, and the cost
of progress previews (every step vs none).

    .venv/bin/python bench/engine_throughput.py                # tiny random-weight SD1.x pipeline, CPU
    .venv/bin/python bench/engine_throughput.py --gpu          # SD1.5 architecture, random weights, 512², fp16,
                                                               # also vs a plain diffusers call per job
How: N jobs (``n=1`` image each, distinct prompts and seeds) are handed to ``LocalDiffusersEngine.generate``
at once with ``asyncio.gather``; "off" is ``max_batch=1`` (one pipeline call per job), "on" is
``max_batch=N`` with a 50 ms window (one call with N prompts / generators). One warm-up engine run and one warm-up round per setting are not timed.
Wall time of the whole round → images/s. Previews: the same N jobs, batching off, ``preview_every=1`` vs 0.
Mixed: N jobs that each have their own guidance, --chaos and (every other one) ``::`` weights, off vs on —
they share one call because guidance and conditioning are per row.
The GPU baseline is a loop of ``pipe(prompt, generator=...)`` calls, one per job, on the same pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from engine.base import GenerationRequest  # noqa: E402
from engine.local import LocalDiffusersEngine  # noqa: E402


def requests(count: int, size: int, steps: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt=f"a painting of thing {i}", width=size, height=size, steps=steps, seed=i, n=1
        )
        for i in range(count)
    ]


def mixed_requests(count: int, size: int, steps: int) -> list[GenerationRequest]:
    """Jobs as users send them: each with its own --stylize (guidance 3..11), --chaos and :: weights."""
    return [
        GenerationRequest(
            prompt=f"a painting of thing {i}",
            width=size,
            height=size,
            steps=steps,
            seed=i,
            n=1,
            guidance=3.0 + 8.0 * i / max(1, count - 1),
            chaos=(i * 37) % 101,
            prompt_parts=((f"a painting of thing {i}", 2.0), ("fog", -0.5)) if i % 2 else (),
        )  # fmt: skip
        for i in range(count)
    ]


def long_prompt_requests(
    count: int, size: int, steps: int, tokenizer: CLIPTokenizer
) -> tuple[list[GenerationRequest], int]:
    """Every second job with a prompt of two encoder windows (76-150 tokens), which run in a call of their own;
    also the long prompts' token count."""
    details = ["fine detail"]
    while len(tokenizer(", ".join(details), add_special_tokens=False, verbose=False).input_ids) < 110:
        details.append(f"fine detail {len(details)}")
    detail = ", ".join(details)
    tokens = len(
        tokenizer(f"a painting of thing 1, {detail}", add_special_tokens=False, verbose=False).input_ids
    )
    return [
        dataclasses.replace(request, prompt=f"{request.prompt}, {detail}") if i % 2 else request
        for i, request in enumerate(requests(count, size, steps))
    ], tokens


async def round_time(
    engine: LocalDiffusersEngine, batch: list[GenerationRequest], with_progress: bool
) -> float:
    started = time.perf_counter()
    callback = (lambda update: None) if with_progress else None
    await asyncio.gather(*(engine.generate(r, callback) for r in batch))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


async def measure(
    model: str,
    device: str,
    batch: list[GenerationRequest],
    *,
    max_batch: int,
    preview_every: int,
    rounds: int,
    dtype: torch.dtype | None = None,
) -> float:
    engine = LocalDiffusersEngine(model, device, max_batch=max_batch, batch_window=0.05,
                                  preview_every=preview_every, dtype=dtype)  # fmt: skip
    await engine.start()
    try:
        await round_time(engine, batch, True)  # warm-up
        times = [await round_time(engine, batch, True) for _ in range(rounds)]
    finally:
        await engine.close()
    return min(times)


def sd15_random_folder(folder: Path) -> Path:
    """An SD1.5-architecture pipeline (UNet 860M, VAE, CLIP-L text encoder) with random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.tiny import write_tiny_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder / "tok"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))  # fmt: skip
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")  # fmt: skip
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(folder / "sd15")
    return folder / "sd15"


def plain_diffusers(model: str, batch: list[GenerationRequest], rounds: int) -> float:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)

    def once() -> float:
        started = time.perf_counter()
        for r in batch:
            pipe(r.prompt, width=r.width, height=r.height, num_inference_steps=r.steps, guidance_scale=r.guidance,
                 generator=torch.Generator("cpu").manual_seed(r.seed))  # fmt: skip
        torch.cuda.synchronize()
        return time.perf_counter() - started

    once()
    return min(once() for _ in range(rounds))


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="SD1.5 architecture at 512², fp16, on CUDA")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu:
            if not torch.cuda.is_available():
                print("engine_throughput --gpu: no CUDA GPU here; skipped (run it on a machine with one).")
                return 0
            jobs, steps, size, device, dtype = (
                args.jobs or 8,
                args.steps or 20,
                args.size or 512,
                "cuda",
                torch.float16,
            )
            model = str(sd15_random_folder(Path(tmp)))
            label = f"SD1.5 architecture, random weights, {size}², fp16, {torch.cuda.get_device_name()}"
        else:
            from engine.tiny import save_tiny_pipeline

            jobs, steps, size, device, dtype = args.jobs or 8, args.steps or 10, args.size or 128, "cpu", None
            model = str(save_tiny_pipeline(Path(tmp) / "tiny"))
            label = f"tiny random SD1.x pipeline, {size}², CPU"
        print(f"# engine throughput: {label}")
        print(f"# python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"{os.cpu_count()} CPUs; {jobs} jobs x 1 image, {steps} steps, CFG 7; best of {args.rounds} rounds")  # fmt: skip
        batch = requests(jobs, size, steps)
        # process warm-up (thread pools, allocator, first-load caches): without it the first setting measured
        # looked ~2x slower than the same setting measured again
        await measure(model, device, batch, max_batch=1, preview_every=1, rounds=1, dtype=dtype)
        off = await measure(
            model, device, batch, max_batch=1, preview_every=1, rounds=args.rounds, dtype=dtype
        )
        on = await measure(
            model, device, batch, max_batch=jobs, preview_every=1, rounds=args.rounds, dtype=dtype
        )
        none = await measure(
            model, device, batch, max_batch=1, preview_every=0, rounds=args.rounds, dtype=dtype
        )
        print(f"batching off (max_batch=1):   {jobs / off:7.2f} images/s  ({off:.2f} s for {jobs} jobs)")
        print(f"batching on  (max_batch={jobs}):   {jobs / on:7.2f} images/s  ({on:.2f} s)  x{off / on:.2f}")
        print(
            f"previews every step vs none:  {off:.2f} s vs {none:.2f} s  -> previews cost {100 * (off - none) / none:+.1f}%"
        )
        mixed = mixed_requests(jobs, size, steps)
        mixed_off = await measure(
            model, device, mixed, max_batch=1, preview_every=1, rounds=args.rounds, dtype=dtype
        )
        mixed_on = await measure(
            model, device, mixed, max_batch=jobs, preview_every=1, rounds=args.rounds, dtype=dtype
        )
        print(
            f"mixed stylize/chaos/:: jobs:  {jobs / mixed_off:7.2f} images/s unbatched, {jobs / mixed_on:7.2f} batched "
            f"x{mixed_off / mixed_on:.2f} (each row its own guidance and embedding)"
        )  # fmt: skip
        long_batch, tokens = long_prompt_requests(
            jobs, size, steps, CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        )
        long_on = await measure(
            model,
            device,
            long_batch,
            max_batch=jobs,
            preview_every=1,
            rounds=args.rounds,
            dtype=dtype,
        )
        print(
            f"half the prompts long ({tokens} tokens): {jobs / long_on:7.2f} images/s batched, vs {jobs / on:.2f} all short "
            f"(x{long_on / on:.2f} the time: two calls per round instead of one)"
        )  # fmt: skip
        if args.gpu:
            plain = plain_diffusers(model, batch, args.rounds)
            print(f"plain diffusers call per job: {jobs / plain:7.2f} images/s  ({plain:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
