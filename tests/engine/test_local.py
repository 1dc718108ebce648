import asyncio
import io
import subprocess
import sys
import threading
from functools import partial

import numpy as np
import pytest
from PIL import Image

from engine.base import (
    CancelToken,
    Engine,
    EngineCancelled,
    EngineError,
    EngineOutOfMemory,
    Operation,
    ProgressUpdate,
)
from engine.local import LocalDiffusersEngine
from tests.engine.support import pixels, small_request

request = partial(small_request, prompt="a red fox in the snow")


def test_import_engine_does_not_import_torch():
    code = "import sys, engine; assert 'torch' not in sys.modules and 'discord' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_is_an_engine(tiny_engine):
    assert isinstance(tiny_engine, Engine)
    assert tiny_engine.slots == 1 and tiny_engine.name == "local"


async def test_generate_before_start_is_an_error(tiny_model_dir):
    with pytest.raises(EngineError, match="not started"):
        await LocalDiffusersEngine(str(tiny_model_dir), device="cpu").generate(request())


async def test_start_with_a_missing_model_is_an_engine_error():
    with pytest.raises(EngineError, match="not found"):
        await LocalDiffusersEngine("/no/such/model.safetensors", device="cpu").start()


async def test_single_file_engine(tiny_single_file, tiny_model_dir):
    engine = LocalDiffusersEngine(str(tiny_single_file), device="cpu", config_folder=str(tiny_model_dir))
    await engine.start()
    images = await engine.generate(request(n=1, steps=2))
    assert images[0].size == (64, 64)
    await engine.close()


async def test_txt2img_returns_n_rgb_images_of_the_requested_size(tiny_engine):
    images = await tiny_engine.generate(request(width=64, height=96, n=3, negative_prompt="blurry"))
    assert len(images) == 3
    assert all(image.size == (64, 96) and image.mode == "RGB" for image in images)


async def test_same_request_same_images(tiny_engine):
    first = await tiny_engine.generate(request())
    second = await tiny_engine.generate(request())
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, second, strict=True))
    other = await tiny_engine.generate(request(seed=43))
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))


async def test_each_tile_is_reproducible_alone(tiny_engine):
    grid = await tiny_engine.generate(request(seed=2**32 - 2, n=4))  # seeds wrap: ..., 2**32-1, 0, 1
    tiles = [pixels(image) for image in grid]
    assert not np.array_equal(tiles[0], tiles[1])
    for i, seed in enumerate([2**32 - 2, 2**32 - 1, 0, 1]):
        alone = pixels((await tiny_engine.generate(request(seed=seed, n=1)))[0])
        difference = np.abs(alone - tiles[i])
        assert difference.max() <= 3 and difference.mean() < 0.5, (i, difference.max(), difference.mean())


async def test_img2img_uses_the_init_image_and_strength(tiny_engine):
    gradient = np.linspace(0, 255, 96 * 80 * 3).reshape(80, 96, 3).astype(np.uint8)
    init = Image.fromarray(gradient).convert("RGBA")  # another size and mode: resized and converted
    updates: list[ProgressUpdate] = []
    weak = await tiny_engine.generate(
        request(operation=Operation.IMG2IMG, init_image=init, strength=0.5, steps=4, n=2), updates.append
    )
    strong = await tiny_engine.generate(
        request(operation=Operation.IMG2IMG, init_image=init, strength=1.0, steps=4, n=2)
    )
    assert [image.size for image in weak] == [(64, 64), (64, 64)]
    assert [(u.step, u.total) for u in updates] == [(1, 2), (2, 2)]  # int(4 * 0.5) real steps
    assert not np.array_equal(pixels(weak[0]), pixels(strong[0]))
    again = await tiny_engine.generate(
        request(operation=Operation.IMG2IMG, init_image=init, strength=0.5, steps=4, n=1)
    )
    assert np.abs(pixels(again[0]) - pixels(weak[0])).max() <= 3


async def test_img2img_needs_an_init_image_and_some_steps(tiny_engine):
    with pytest.raises(EngineError, match="init image"):
        await tiny_engine.generate(request(operation=Operation.IMG2IMG))
    with pytest.raises(EngineError, match="no denoising steps"):
        await tiny_engine.generate(
            request(operation=Operation.IMG2IMG, init_image=Image.new("RGB", (64, 64)), strength=0.1, steps=3)
        )


async def test_bad_sizes_are_refused(tiny_engine):
    with pytest.raises(EngineError, match="multiples of 8"):
        await tiny_engine.generate(request(width=60))


async def test_progress_arrives_on_the_loop_thread_in_order_with_jpeg_previews(tiny_engine):
    loop_thread = threading.current_thread()
    seen: list[tuple[threading.Thread, ProgressUpdate]] = []
    await tiny_engine.generate(
        request(steps=4), lambda update: seen.append((threading.current_thread(), update))
    )
    assert all(thread is loop_thread for thread, _ in seen)
    updates = [update for _, update in seen]
    assert [(u.step, u.total) for u in updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for update in updates:
        preview = Image.open(io.BytesIO(update.preview))
        assert preview.format == "JPEG" and preview.size == (64, 64)


async def test_preview_cadence(tiny_model_dir):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu", preview_every=2, preview_interval=0)
    await engine.start()
    updates: list[ProgressUpdate] = []
    await engine.generate(request(steps=5, n=1), updates.append)
    assert [u.step for u in updates] == [1, 2, 3, 4, 5]
    assert [u.step for u in updates if u.preview is not None] == [2, 4]
    await engine.close()


async def test_default_previews_follow_the_clock(tiny_model_dir, monkeypatch):
    """By default a job previews its first step, then at most one step per second (a fake clock here)."""
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu")
    now = [0.0]

    def clock() -> float:
        now[0] += 0.4  # each preview decision 0.4 s after the last
        return now[0]

    engine.cadence.clock = clock
    await engine.start()
    updates: list[ProgressUpdate] = []
    await engine.generate(request(steps=8, n=1), updates.append)
    assert [u.step for u in updates] == list(range(1, 9))
    assert [u.step for u in updates if u.preview is not None] == [1, 4, 7]  # 0.4, 1.6, 2.8 s
    await engine.close()


class LoopProbe(CancelToken):
    """At every check (one before the run, one per step) the engine thread asks the event loop to run a
    callback and waits for it: only a loop that keeps running while the engine works can answer. No timing:
    a busy machine only makes the answers slower; a blocked loop never answers (``wait`` gives up)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wait: float = 10.0) -> None:
        super().__init__()
        self.loop, self.wait = loop, wait
        self.checks = self.answered = 0

    @property
    def cancelled(self) -> bool:
        self.checks += 1
        if self.answered == self.checks - 1:  # stop asking once the loop failed to answer
            answered = threading.Event()
            self.loop.call_soon_threadsafe(answered.set)
            if answered.wait(self.wait):
                self.answered += 1
        return super().cancelled


async def test_the_event_loop_keeps_running_during_generation(tiny_engine):
    probe = LoopProbe(asyncio.get_running_loop())
    await tiny_engine.generate(request(steps=4), cancel=probe)
    assert probe.checks >= 5 and probe.answered == probe.checks  # before the run and after every step


class CancelAfterChecks(CancelToken):
    """Reports ``cancelled`` from the ``limit``-th check on (one check before the run, one per step)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.checks = 0
        self.limit = limit

    @property
    def cancelled(self) -> bool:
        self.checks += 1
        return self.checks >= self.limit


async def test_cancel_stops_at_the_next_step(tiny_engine):
    updates: list[ProgressUpdate] = []
    token = CancelAfterChecks(limit=4)  # before the run, after step 1, after step 2, after step 3 → stop
    with pytest.raises(EngineCancelled):
        await tiny_engine.generate(request(steps=10), updates.append, token)
    assert [u.step for u in updates] == [1, 2]
    assert token.checks == 4
    assert len(await tiny_engine.generate(request(n=1))) == 1  # the engine is usable afterwards


class LockstepToken(CancelToken):
    """Makes the engine thread wait, at each step's check, until the loop has handled the progress update
    two checks back: whatever the loop does with an update is seen by the engine a step later, however
    busy the machine (one check before the run, one per step)."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.handled: dict[int, threading.Event] = {}

    def handled_step(self, step: int) -> threading.Event:
        return self.handled.setdefault(step, threading.Event())

    @property
    def cancelled(self) -> bool:
        self.checks += 1
        if self.checks >= 3:
            assert self.handled_step(self.checks - 2).wait(30), "the loop never handled the update"
        return super().cancelled


async def test_cancel_from_the_loop_during_progress(tiny_engine):
    token = LockstepToken()
    steps: list[int] = []

    def on_progress(update: ProgressUpdate) -> None:
        steps.append(update.step)
        if update.step == 2:
            token.cancel()
        token.handled_step(update.step).set()

    with pytest.raises(EngineCancelled):
        await tiny_engine.generate(request(steps=40), on_progress, token)
    assert steps[:2] == [1, 2] and max(steps) <= 3


async def test_cancel_before_start(tiny_engine):
    token = CancelToken()
    token.cancel()
    updates: list[ProgressUpdate] = []
    with pytest.raises(EngineCancelled):
        await tiny_engine.generate(request(), updates.append, token)
    assert updates == []


async def test_cancelling_the_awaiting_task_stops_the_thread(tiny_engine):
    steps: list[int] = []
    first_step = asyncio.Event()

    def on_progress(update: ProgressUpdate) -> None:
        steps.append(update.step)
        first_step.set()

    task = asyncio.create_task(tiny_engine.generate(request(steps=40), on_progress))
    await first_step.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert max(steps) < 40
    assert tiny_engine._lock.acquire(blocking=False)  # the worker thread has let go of the slot
    tiny_engine._lock.release()


class Exploding:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, **kwargs):
        raise self.error


async def test_out_of_memory_and_other_errors(tiny_engine, monkeypatch):
    pipes = tiny_engine._pipelines(None)
    monkeypatch.setattr(pipes, "txt2img", Exploding(RuntimeError("CUDA out of memory. Tried to allocate")))
    with pytest.raises(EngineOutOfMemory, match="out of memory"):
        await tiny_engine.generate(request())
    monkeypatch.setattr(pipes, "txt2img", Exploding(ValueError("secret /home/me/path detail")))
    with pytest.raises(EngineError) as raised:
        await tiny_engine.generate(request())
    assert type(raised.value) is EngineError and "secret" not in str(raised.value)
