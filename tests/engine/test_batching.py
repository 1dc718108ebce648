"""``engine.batching`` on its own: no torch, no model — which jobs share a call, cancel, out-of-memory splits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from engine.batching import (
    Interrupted,
    Job,
    JobQueue,
    auto_batch_size,
    bucket,
    buckets,
    groups_by,
    run_in_halves,
    stop_cancelled,
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


SWITCHES: dict[int, list[bool]] = {}


def job(loop: asyncio.AbstractEventLoop, name: str, key: object = "k", cancelled: bool = False) -> Job[str]:
    switch = [cancelled]
    made: Job[str] = Job(name, "m", None, lambda: switch[0], loop, loop.create_future(), key=key)
    SWITCHES[id(made)] = switch
    return made


def cancel(made: Job[str]) -> None:
    SWITCHES[id(made)][0] = True


def test_the_module_does_not_import_torch():
    code = "import sys, engine.batching; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compatible_jobs_share_a_batch_in_queue_order(loop):
    queue: JobQueue[str] = JobQueue(max_batch=3, window=0)
    a, b, c, d, e = (job(loop, n, key) for n, key in zip("abcde", ["x", "y", "x", "x", "x"], strict=True))
    for j in (a, b, c, d, e):
        queue.put(j)
    assert [j.request for j in queue.take() or []] == ["a", "c", "d"]  # at most max_batch, same key
    assert [j.request for j in queue.take() or []] == ["b"]
    assert [j.request for j in queue.take() or []] == ["e"]
    assert len(queue) == 0


def test_no_batching_and_keyless_jobs_run_alone(loop):
    alone: JobQueue[str] = JobQueue(max_batch=1, window=0)
    keyless: JobQueue[str] = JobQueue(max_batch=4, window=0)
    for queue in (alone, keyless):
        key = None if queue is keyless else "k"
        for name in "ab":
            queue.put(job(loop, name, key))
        assert [j.request for j in queue.take() or []] == ["a"]


def test_the_window_waits_for_a_companion(loop):
    queue: JobQueue[str] = JobQueue(max_batch=2, window=30.0)
    queue.put(job(loop, "a"))
    taken: list[list[str]] = []
    worker = threading.Thread(target=lambda: taken.append([j.request for j in queue.take() or []]))
    worker.start()
    queue.put(job(loop, "b"))  # arrives while the worker waits: the batch is full, so it returns at once
    worker.join(timeout=10)
    assert taken == [["a", "b"]]


def test_a_job_cancelled_while_waiting_is_answered_and_skipped(loop):
    queue: JobQueue[str] = JobQueue(max_batch=2, window=0, cancelled=lambda j: RuntimeError("gone"))
    a, b = job(loop, "a", cancelled=True), job(loop, "b")
    queue.put(a)
    queue.put(b)
    assert [j.request for j in queue.take() or []] == ["b"]
    assert isinstance(a.outcome, RuntimeError) and a.delivered
    loop.run_until_complete(asyncio.sleep(0))
    assert isinstance(a.future.exception(), RuntimeError)


def test_withdraw_and_close(loop):
    queue: JobQueue[str] = JobQueue()
    a, b = job(loop, "a"), job(loop, "b")
    queue.put(a)
    queue.put(b)
    assert queue.withdraw(a) and not queue.withdraw(a)
    assert queue.close() == [b]
    assert queue.take() is None
    queue.open()
    queue.put(a)
    assert queue.take() == [a]


def test_stop_cancelled_answers_one_job_and_stops_when_none_is_left(loop):
    a, b = job(loop, "a"), job(loop, "b")
    stop_cancelled([a, b], lambda j: RuntimeError("cancelled"))
    assert not a.done and not b.done
    cancel(a)
    stop_cancelled([a, b], lambda j: RuntimeError("cancelled"))
    assert isinstance(a.outcome, RuntimeError) and a.delivered and not b.done  # b goes on
    cancel(b)
    with pytest.raises(Interrupted):
        stop_cancelled([a, b], lambda j: RuntimeError("cancelled"))
    alone = job(loop, "c", cancelled=True)
    with pytest.raises(Interrupted):
        stop_cancelled([alone], lambda j: RuntimeError("cancelled"))
    assert not alone.done  # the caller answers the jobs of an interrupted call


def test_groups_keep_order():
    assert groups_by(["aa", "b", "cc", "d", "eee"], len) == [[0, 2], [1, 3], [4]]


class OutOfMemory(Exception):
    pass


def test_out_of_memory_splits_in_halves_until_it_fits():
    attempts: list[list[int]] = []
    splits: list[int] = []

    def attempt(jobs: list[int]) -> None:
        attempts.append(jobs)
        if len(jobs) > 2:
            raise OutOfMemory

    run_in_halves(list(range(7)), attempt, lambda e: isinstance(e, OutOfMemory), splits.append)
    assert splits == [7, 3, 4]
    assert [a for a in attempts if len(a) <= 2] == [[0], [1, 2], [3, 4], [5, 6]]  # every job ran once


def test_out_of_memory_of_one_job_and_other_errors_propagate():
    def oom(jobs: list[int]) -> None:
        raise OutOfMemory

    with pytest.raises(OutOfMemory):
        run_in_halves([1], oom, lambda e: isinstance(e, OutOfMemory))
    seen: list[list[int]] = []

    def failing(jobs: list[int]) -> None:
        seen.append(jobs)
        raise ValueError

    with pytest.raises(ValueError):
        run_in_halves([1, 2], failing, lambda e: isinstance(e, OutOfMemory))
    assert seen == [[1, 2]]  # not split: only out of memory is


def test_auto_batch_size():
    gib = 2**30
    assert auto_batch_size(None, 512, 512) == 1  # no GPU
    assert auto_batch_size(0, 512, 512) == 1
    assert auto_batch_size(8 * gib, 512, 512) == 6  # 0.75 x 8 GiB / 1 GiB
    assert auto_batch_size(100 * gib, 512, 512) == 8  # capped
    assert auto_batch_size(100 * gib, 512, 512, cap=64) == 64
    assert auto_batch_size(8 * gib, 1024, 1024) == 1  # four times the pixels
    assert auto_batch_size(16 * gib, 512, 512, images_per_job=4) == 3
    assert auto_batch_size(gib // 2, 512, 512) == 1  # never 0


def test_buckets():
    assert [bucket(rows, 32) for rows in (1, 2, 3, 4, 5, 8, 9, 17, 32)] == [1, 2, 4, 4, 8, 8, 16, 32, 32]
    assert bucket(33, 32) == 33  # beyond the largest bucket: as is
    assert buckets(32) == [1, 2, 4, 8, 16, 32] and buckets(5) == [1, 2, 4, 8] and buckets(1) == [1]
