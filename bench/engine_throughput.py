"""Engine throughput: the local engine against a plain diffusers call on the same pipeline, at the same batch.

    .venv/bin/python bench/engine_throughput.py             # CPU: tiny random SD1.x pipeline (engine.tiny), 4 jobs
    .venv/bin/python bench/engine_throughput.py --extras    # + mixed stylize/chaos/:: jobs, long prompts
    python3 bench/engine_throughput.py --gpu                # CUDA: SD1.5 architecture, random weights, 512²,
                                                            # 20 steps, fp16 (bench/gpu.sh runs it)

How: N jobs (``n=1`` image each, distinct prompts and seeds, CFG 7) are handed to
``LocalDiffusersEngine.generate`` at once with ``asyncio.gather``, with previews on at the engine's default
cadence (a progress callback is attached, as the bot does). The baseline is plain diffusers on a second copy
of the same pipeline: ``pipe([prompts], generator=[one CPU generator per image])`` in chunks of the same
batch size, ``output_type="pil"``, called from a worker thread like the engine's (on a loaded 2-core machine
torch calls from the main thread measured up to 2x slower than the same calls from a worker thread). Engine and baseline rounds alternate; each figure is the best of
``--rounds`` rounds after one warm-up round. The ratio is engine time ÷ baseline time (≤ 1 = the engine is
at least as fast).

``--gpu`` also prints: the batch sizes 1, 8 and the engine's ``auto`` size; previews at the default
cadence vs none; ``torch.compile`` (``ENGINE_TORCH_COMPILE``, mode default, one bucket) off vs on with the
start-up compile time; images/s as a fraction of the compute floor (34.7 TFLOP per SD1.5 512² 20-step CFG image,
scaled by pixels and steps; the GPU's dense fp16 peak from its name or ``--peak-tflops``); peak GPU memory per
setting; and whether a step callback synchronised with the GPU (``torch.cuda.set_sync_debug_mode("error")``).

The script also runs against older engines (it passes only the settings the engine knows), so a before/after
comparison is ``git stash`` / a checkout of the old commit and the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.base import GenerationRequest  # noqa: E402
from engine.local import LocalDiffusersEngine  # noqa: E402

PEAK_TFLOPS = {  # dense fp16/bf16 tensor-core peak, public datasheets
    "H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
    "V100": 125.0, "T4": 65.0,
}  # fmt: skip
SD15_UNET_TFLOP_512 = 0.80  # one UNet row at 512² (ENGINES.md)
SD15_VAE_TFLOP_512 = 2.51


def requests(count: int, size: int, steps: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt=f"a painting of thing {i}", width=size, height=size, steps=steps, seed=i, n=1
        )
        for i in range(count)
    ]


def make_engine(model: str, device: str, dtype: torch.dtype | None, **settings: Any) -> LocalDiffusersEngine:
    """An engine with ``settings`` the installed engine knows (older engines lack some)."""
    known = inspect.signature(LocalDiffusersEngine).parameters
    return LocalDiffusersEngine(
        model, device, dtype=dtype, **{k: v for k, v in settings.items() if k in known}
    )


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall seconds and process CPU seconds (all threads) of one round. On a loaded CPU machine the CPU
    seconds are the steadier measure of the work done; on a GPU only the wall time means anything."""

    wall: float
    cpu: float

    @staticmethod
    def best(timings: list[Timing]) -> Timing:
        return Timing(min(t.wall for t in timings), min(t.cpu for t in timings))


class Stopwatch:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Timing:
        return Timing(time.perf_counter() - self.wall, time.process_time() - self.cpu)


async def engine_round(engine: LocalDiffusersEngine, batch: list[GenerationRequest]) -> Timing:
    watch = Stopwatch()
    await asyncio.gather(*(engine.generate(r, lambda update: None) for r in batch))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return watch.stop()


def plain_round(pipe: Any, batch: list[GenerationRequest], size: int) -> Timing:
    watch = Stopwatch()
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        r = chunk[0]
        pipe([c.prompt for c in chunk], width=r.width, height=r.height, num_inference_steps=r.steps,
             guidance_scale=r.guidance, generator=[torch.Generator("cpu").manual_seed(c.seed) for c in chunk],
             output_type="pil")  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return watch.stop()


@dataclasses.dataclass
class Result:
    engine_timing: Timing
    plain_timing: Timing
    batch: int
    peak_gib: float | None = None

    @property
    def engine(self) -> float:
        return self.engine_timing.wall

    @property
    def plain(self) -> float:
        return self.plain_timing.wall

    @property
    def ratio(self) -> float:
        return self.engine / self.plain

    @property
    def cpu_ratio(self) -> float:
        return self.engine_timing.cpu / self.plain_timing.cpu


async def compare(
    engine: LocalDiffusersEngine, pipe: Any, batch: list[GenerationRequest], size: int, rounds: int
) -> Result:
    """Best of ``rounds`` alternating engine and plain rounds, after a warm-up of each."""
    await engine_round(engine, batch)
    await asyncio.to_thread(plain_round, pipe, batch, size)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    engine_times, plain_times = [], []
    for _ in range(rounds):
        engine_times.append(await engine_round(engine, batch))
        plain_times.append(await asyncio.to_thread(plain_round, pipe, batch, size))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return Result(Timing.best(engine_times), Timing.best(plain_times), size, peak)


async def engine_only(engine: LocalDiffusersEngine, batch: list[GenerationRequest], rounds: int) -> float:
    await engine_round(engine, batch)
    return min([(await engine_round(engine, batch)).wall for _ in range(rounds)])


async def interleaved(
    engines: dict[str, LocalDiffusersEngine], batch: list[GenerationRequest], rounds: int
) -> dict[str, Timing]:
    """Best round of each engine, their rounds alternating (so load drift hits all alike)."""
    times: dict[str, list[Timing]] = {label: [] for label in engines}
    for engine in engines.values():
        await engine_round(engine, batch)
    for _ in range(rounds):
        for label, engine in engines.items():
            times[label].append(await engine_round(engine, batch))
    return {label: Timing.best(t) for label, t in times.items()}


def plain_pipeline(model: str, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(device)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def line(label: str, jobs: int, result: Result) -> str:
    memory = f", peak {result.peak_gib:.1f} GiB" if result.peak_gib is not None else ""
    return (
        f"{label:<34} engine {result.engine / jobs * 1000:8.1f} ms/job ({jobs / result.engine:6.2f} img/s), "
        f"plain diffusers {result.plain / jobs * 1000:8.1f} ms/job ({jobs / result.plain:6.2f} img/s)  "
        f"ratio {result.ratio:.3f}{memory}"
        + ("" if torch.cuda.is_available() else f"; CPU-time ratio {result.cpu_ratio:.3f}")
    )


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


def peak_tflops(override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value, f"datasheet for {key}"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def sync_check(model: str, dtype: torch.dtype) -> str:
    """Run one job with CUDA's sync debug mode set to "error" inside every step callback."""
    try:
        from engine import driver
    except ImportError:
        return "no engine.driver in this engine (older code): not checked"
    original = driver.StepCallback.__call__

    def strict(self: Any, *args: Any) -> Any:
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    setattr(driver.StepCallback, "__call__", strict)  # noqa: B010 (a method swap)
    engine = make_engine(model, "cuda", dtype, max_batch=2, preview_interval=0)

    async def go() -> None:
        await engine.start()
        try:
            await asyncio.gather(*(engine.generate(r, lambda u: None) for r in requests(2, 512, 6)))
        finally:
            await engine.close()

    try:
        asyncio.run(go())
        return "none (sync debug mode 'error' in every step callback, previews every step)"
    except Exception as error:
        return f"FOUND: {type(error).__name__}: {error}"
    finally:
        setattr(driver.StepCallback, "__call__", original)  # noqa: B010


async def gpu(args: argparse.Namespace, model: str) -> None:
    dtype = torch.float16
    jobs, steps, size = args.jobs or 8, args.steps or 20, args.size or 512
    batch = requests(jobs, size, steps)
    pipe = plain_pipeline(model, "cuda", dtype)
    results: dict[str, Result] = {}
    for label, setting in (("batch 1", 1), ("batch 8", 8), ("batch auto", "auto")):
        engine = make_engine(model, "cuda", dtype, max_batch=setting, batch_window=0.05)
        await engine.start()
        try:
            chosen = engine.max_batch
            work = requests(max(jobs, chosen), size, steps)
            result = await compare(engine, pipe, work, chosen, args.rounds)
        finally:
            await engine.close()
        results[label] = result
        print(line(f"{label} (= {chosen})", len(work), result), flush=True)
    engine = make_engine(
        model, "cuda", dtype, max_batch=8, batch_window=0.05, preview_interval=-1, preview_every=0
    )
    await engine.start()
    try:
        none = await engine_only(engine, batch, args.rounds)
    finally:
        await engine.close()
    with_previews = results["batch 8"].engine
    print(f"previews at the default cadence vs none, batch 8: {with_previews:.3f} s vs {none:.3f} s "
          f"-> previews cost {100 * (with_previews - none) / none:+.1f}%", flush=True)  # fmt: skip
    if not args.no_compile:
        engine = make_engine(model, "cuda", dtype, max_batch=8, batch_window=0.05, compile_unet=True,
                             compile_buckets=[8], compile_cache_dir=args.cache)  # fmt: skip
        started = time.perf_counter()
        await engine.start()
        compile_seconds = time.perf_counter() - started
        try:
            compiled = await compare(engine, pipe, batch, 8, args.rounds)
        finally:
            await engine.close()
        print(line("batch 8, torch.compile default", jobs, compiled), flush=True)
        print(f"compile off vs on, batch 8: {results['batch 8'].engine:.3f} s vs {compiled.engine:.3f} s "
              f"(x{results['batch 8'].engine / compiled.engine:.2f}); start-up with compile {compile_seconds:.0f} s",
              flush=True)  # fmt: skip
        results["compiled"] = compiled
    peak, source = peak_tflops(args.peak_tflops)
    pixels = size * size / 512**2
    tflop = (steps * 2 * SD15_UNET_TFLOP_512 + SD15_VAE_TFLOP_512) * pixels
    if peak:
        floor = peak / tflop
        print(
            f"compute floor: {tflop:.1f} TFLOP per image at {peak:.0f} TFLOP/s ({source}) = {floor:.1f} img/s"
        )
        for label, result in results.items():
            count = max(jobs, result.batch)
            rate = count / result.engine
            print(f"  {label:<12} engine {rate:6.2f} img/s = {100 * rate / floor:5.1f}% of the floor")
    else:
        print(f"compute floor: {tflop:.1f} TFLOP per image; {source}")
    print(f"host syncs in step callbacks: {sync_check(model, dtype)}")


async def cpu(args: argparse.Namespace, model: str) -> None:
    jobs, steps, size = args.jobs or 4, args.steps or 10, args.size or 128
    batch = requests(jobs, size, steps)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    pipe = plain_pipeline(model, "cpu", torch.float32)
    for label, setting in (("batch 1", 1), (f"batch {jobs}", jobs)):
        engine = make_engine(model, "cpu", None, max_batch=setting, batch_window=0.05)
        await engine.start()
        try:
            print(line(label, jobs, await compare(engine, pipe, batch, setting, args.rounds)), flush=True)
        finally:
            await engine.close()
    engines = {
        "every step": make_engine(model, "cpu", None, max_batch=1, preview_interval=0, preview_every=1),
        "default cadence": make_engine(model, "cpu", None, max_batch=1),
        "none": make_engine(model, "cpu", None, max_batch=1, preview_interval=-1, preview_every=0),
    }
    for engine in engines.values():
        await engine.start()
    try:
        timings = await interleaved(engines, batch, args.rounds)
    finally:
        for engine in engines.values():
            await engine.close()
    none = timings["none"]
    print("previews, batch 1 (wall / CPU time vs none): " + ", ".join(
        f"{label} {t.wall:.2f} s ({100 * (t.wall - none.wall) / none.wall:+.1f}%) / {t.cpu:.2f} s "
        f"({100 * (t.cpu - none.cpu) / none.cpu:+.1f}%)" for label, t in timings.items()))  # fmt: skip
    if args.extras:
        await extras(model, jobs, size, steps, args.rounds)


async def extras(model: str, jobs: int, size: int, steps: int, rounds: int) -> None:
    """Jobs as users send them (own guidance, --chaos, :: weights) and half the prompts long, off vs on."""
    from transformers import CLIPTokenizer

    mixed = [
        dataclasses.replace(
            r,
            guidance=3.0 + 8.0 * i / max(1, jobs - 1),
            chaos=(i * 37) % 101,
            prompt_parts=((r.prompt, 2.0), ("fog", -0.5)) if i % 2 else (),
        )  # fmt: skip
        for i, r in enumerate(requests(jobs, size, steps))
    ]
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    details = ["fine detail"]
    while len(tokenizer(", ".join(details), add_special_tokens=False, verbose=False).input_ids) < 110:
        details.append(f"fine detail {len(details)}")
    long = [dataclasses.replace(r, prompt=f"{r.prompt}, {', '.join(details)}") if i % 2 else r
            for i, r in enumerate(requests(jobs, size, steps))]  # fmt: skip
    for label, work in (("mixed stylize/chaos/::", mixed), ("half the prompts long", long)):
        times = {}
        for setting in (1, jobs):
            engine = make_engine(model, "cpu", None, max_batch=setting, batch_window=0.05)
            await engine.start()
            try:
                times[setting] = await engine_only(engine, work, rounds)
            finally:
                await engine.close()
        print(f"{label:<24} {jobs / times[1]:6.2f} img/s unbatched, {jobs / times[jobs]:6.2f} batched "
              f"(x{times[1] / times[jobs]:.2f})")  # fmt: skip


def header(label: str, args: argparse.Namespace, jobs: int, steps: int) -> None:
    print(f"# engine throughput: {label}")
    print(f"# python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; {jobs} jobs x 1 image, {steps} steps, CFG 7; best of {args.rounds} rounds; "
          f"engine {inspect.getsourcefile(LocalDiffusersEngine)}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="SD1.5 architecture at 512², fp16, on CUDA")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense fp16 peak")
    parser.add_argument("--no-compile", action="store_true", help="--gpu: skip the torch.compile comparison")
    parser.add_argument("--cache", default=None, help="--gpu: TORCHINDUCTOR_CACHE_DIR for the compile run")
    parser.add_argument(
        "--extras", action="store_true", help="CPU: also mixed-settings and long-prompt batches"
    )
    args = parser.parse_args()
    run: Callable[[argparse.Namespace, str], Any]
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu:
            if not torch.cuda.is_available():
                print("engine_throughput --gpu: no CUDA GPU here; skipped (run it on a machine with one).")
                return 0
            started = time.perf_counter()
            model = str(sd15_random_folder(Path(tmp)))
            header(f"SD1.5 architecture, random weights, {args.size or 512}², fp16, {torch.cuda.get_device_name()} "
                   f"(model built in {time.perf_counter() - started:.0f} s)", args, args.jobs or 8, args.steps or 20)  # fmt: skip
            run = gpu
        else:
            from engine.tiny import save_tiny_pipeline

            model = str(save_tiny_pipeline(Path(tmp) / "tiny"))
            header(
                f"tiny random SD1.x pipeline, {args.size or 128}², CPU",
                args,
                args.jobs or 4,
                args.steps or 10,
            )
            run = cpu
        asyncio.run(run(args, model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
