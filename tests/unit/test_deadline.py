"""Waiting with a time limit never cancels the work waited for (a canceled query can keep a lock)."""

from __future__ import annotations

import asyncio

import pytest

from bot.deadline import Deadline, finish_within


async def test_ready_work_gives_its_result() -> None:
    async def quick() -> int:
        return 7

    assert await finish_within(quick(), 1.0) == 7


async def test_errors_of_the_work_reach_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("no such job")

    with pytest.raises(ValueError, match="no such job"):
        await finish_within(broken(), 1.0)


async def test_late_work_times_out_but_runs_to_its_end() -> None:
    release, finished = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        await release.wait()
        finished.set()

    with pytest.raises(TimeoutError):
        await finish_within(slow(), 0.05)
    release.set()
    await asyncio.wait_for(finished.wait(), 1.0)  # not canceled: it finished after the caller gave up


async def test_a_canceled_caller_leaves_the_work_running() -> None:
    release, finished = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        await release.wait()
        finished.set()

    waiter = asyncio.create_task(finish_within(slow(), 10.0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await asyncio.wait_for(finished.wait(), 1.0)


async def test_a_deadline_shares_its_time_between_waits() -> None:
    deadline = Deadline(0.3)
    await deadline.wait(asyncio.sleep(0.1))
    assert 0.0 < deadline.left() <= 0.2
    with pytest.raises(TimeoutError):
        await deadline.wait(asyncio.sleep(1.0))
    assert deadline.left() == 0.0
