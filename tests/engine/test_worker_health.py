"""The local engine's worker thread: if it dies, its jobs fail with a message and a new worker serves the next ones
(issue 15 item 9)."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.base import EngineError
from engine.local import WORKER_DIED, LocalDiffusersEngine
from tests.engine.support import small_request


class _ThreadKiller(BaseException):
    """Nothing in the worker catches it: the thread dies, as with a bug outside ``_run_batch``'s guard."""


async def test_a_dead_worker_fails_its_jobs_and_is_restarted(tiny_model_dir, monkeypatch):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu")
    await engine.start()
    try:
        first_worker = engine._worker
        run_batch = engine._run_batch

        def die_once_another_job_waits(batch):
            # hold the running job until a second one is waiting behind it (polled: the queue's condition
            # is its own; the second job is queued by the event loop, which this thread does not block)
            deadline = time.monotonic() + 60
            while engine.queue_length == 0:
                assert time.monotonic() < deadline, "the second job never queued"
                time.sleep(0.01)
            raise _ThreadKiller

        monkeypatch.setattr(engine, "_run_batch", die_once_another_job_waits)
        running = asyncio.ensure_future(engine.generate(small_request(n=1, steps=1)))
        waiting = asyncio.ensure_future(engine.generate(small_request(n=1, steps=1, seed=7)))
        results = await asyncio.wait_for(asyncio.gather(running, waiting, return_exceptions=True), 180)
        for outcome in results:
            assert isinstance(outcome, EngineError) and str(outcome) == WORKER_DIED
        first_worker.join(10)
        assert not first_worker.is_alive()

        monkeypatch.setattr(engine, "_run_batch", run_batch)
        images = await asyncio.wait_for(engine.generate(small_request(n=1, steps=1)), 180)
        assert len(images) == 1
        assert engine._worker is not None and engine._worker is not first_worker and engine._worker.is_alive()
    finally:
        await engine.close()


async def test_a_closed_engine_refuses_work(tiny_model_dir):
    engine = LocalDiffusersEngine(str(tiny_model_dir), device="cpu")
    await engine.start()
    await engine.close()
    with pytest.raises(EngineError, match="not started"):
        await engine.generate(small_request(n=1, steps=1))
