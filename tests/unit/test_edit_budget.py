"""The shared progress-edit budget, driven by a fake clock (deterministic) and, for the sender gate, a real loop."""

import asyncio
import random
import time

import pytest

from bot.edit_budget import EditBudget
from bot.throttle import ThrottledSender


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window - 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_interval_grows_with_running_jobs_and_never_drops_below_the_minimum():
    budget = EditBudget(20, min_interval=1.5, clock=FakeClock())
    assert budget.interval() == 1.5
    for i in range(30):
        budget.register(i)
    assert budget.interval() == 1.5  # 30 jobs at 1.5 s = 20/s: still fits
    for i in range(30, 100):
        budget.register(i)
    assert budget.interval() == pytest.approx(5.0)  # 100 jobs share 20/s: one edit per 5 s each
    budget.register(5)  # registering twice counts once
    assert budget.running == 100
    for i in range(100):
        budget.unregister(i)
    budget.unregister(12345)  # unknown: ignored
    assert budget.running == 0 and budget.interval() == 1.5


def test_later_edits_are_spaced_at_the_global_rate():
    clock = FakeClock()
    budget = EditBudget(10, min_interval=1, clock=clock)
    waits = [budget.reserve_global() for _ in range(5)]
    assert waits == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    clock.t += 10  # idle time does not bank credit for later (non-first) edits
    assert budget.reserve_global() == 0
    assert budget.reserve_global() == pytest.approx(0.1)


def test_first_edits_may_burst_then_queue():
    clock = FakeClock()
    budget = EditBudget(10, min_interval=1, burst=4, clock=clock)
    waits = [budget.reserve_global(first=True) for _ in range(6)]
    assert waits[:4] == pytest.approx([0, 0, 0, 0])  # four first previews at once
    assert waits[4] == pytest.approx(0.1) and waits[5] == pytest.approx(0.2)
    # a later edit of a running job waits behind the burst (it has already shown something)
    assert budget.reserve_global() == pytest.approx(0.6)


def test_first_edit_overtakes_queued_progress_edits():
    clock = FakeClock()
    budget = EditBudget(10, min_interval=1, burst=5, clock=clock)
    for _ in range(3):
        budget.reserve_global()  # booked at +0, +0.1, +0.2
    assert budget.reserve_global(first=True) == 0  # a new job's first preview does not wait for them


def test_channel_edits_are_spaced_per_channel_without_burst():
    clock = FakeClock()
    budget = EditBudget(20, min_interval=1, channel_rate=0.5, clock=clock)
    assert [budget.reserve_channel(7) for _ in range(3)] == pytest.approx([0, 2, 4])
    assert budget.reserve_channel(8) == 0  # another channel has its own bucket
    clock.t += 100
    assert budget.reserve_channel(7) == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_load_never_exceeds_the_budget_in_any_window(seed):
    """Random arrivals of first and later edits: grants per window ≤ burst + rate·W (globally) and
    ≤ 1 + channel_rate·W per channel, so Discord's 50/1 s global and 5/5 s channel buckets are safe."""
    rng = random.Random(seed)
    clock = FakeClock()
    budget = EditBudget(20, min_interval=1.5, burst=10, channel_rate=0.5, clock=clock)
    granted: list[float] = []
    channel_granted: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(3000):
        clock.t += rng.expovariate(60)  # asked for 3x faster than the budget
        channel = rng.choice([None, None, None, 1, 2])
        if channel is not None:
            channel_granted[channel].append(clock.t + budget.reserve_channel(channel))
        granted.append(clock.t + budget.reserve_global(first=rng.random() < 0.2))
    assert max_in_window(granted, 1.0) <= 10 + 20
    assert max_in_window(granted, 5.0) <= 10 + 100
    for times in channel_granted.values():
        assert max_in_window(times, 5.0) <= 3
    assert budget.granted == 3000


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        EditBudget(0)
    with pytest.raises(ValueError):
        EditBudget(10, burst=0)


async def test_sender_gate_and_dynamic_interval_space_many_senders():
    """Twelve throttled senders through one budget of 20/s: first sends go out at once (burst), every send
    passes the budget's gate, and each sender's gaps follow the growing interval. (How many sends fit in a
    window is the budget's own arithmetic, checked on a fake clock above; real sends may bunch up behind a
    busy machine, so only lower bounds are checked on the real clock here.)"""
    budget = EditBudget(20, min_interval=0.1, burst=12)
    sent: dict[int, list[float]] = {i: [] for i in range(12)}
    senders = []
    for i in range(12):
        budget.register(i)

        async def send(item: int, i: int = i) -> None:
            sent[i].append(time.monotonic())

        senders.append(ThrottledSender(send, budget.interval, gate=lambda first: budget.acquire(first=first)))
    for _ in range(40):
        for s in senders:
            s.offer(1)
        await asyncio.sleep(0.02)
    for s in senders:
        await s.close()
    assert budget.interval() == pytest.approx(0.6)  # 12 jobs / 20 per s
    firsts = [times[0] for times in sent.values()]
    seconds = [times[1] for times in sent.values() if len(times) > 1]
    assert seconds and max(firsts) < min(seconds)  # every first edit went out before anyone's second
    assert budget.granted >= sum(len(times) for times in sent.values())  # every send passed the gate
    for times in sent.values():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= 0.6 - 0.02 for gap in gaps)


def test_backlog_is_how_long_a_slot_booked_now_would_wait():
    clock = FakeClock()
    budget = EditBudget(10, min_interval=1, channel_rate=0.5, clock=clock)
    assert budget.backlog() == 0 and budget.backlog("c") == 0
    budget.reserve_global()
    budget.reserve_global()  # slots at t and t + 0.1: the next one is at t + 0.2
    assert budget.backlog() == pytest.approx(0.2)
    budget.reserve_channel("c")  # the channel's next slot is 2 s away
    assert budget.backlog("c") == pytest.approx(2.0) and budget.backlog("d") == pytest.approx(0.2)
    clock.t += 5
    assert budget.backlog("c") == 0 and budget.granted == 2


class FakeSleep:
    """``sleep`` for an ``EditBudget`` on a ``FakeClock``: moves the clock instead of waiting. With
    ``keep_booked``, other jobs keep that many seconds of edits booked ahead while the time passes."""

    def __init__(self, clock: FakeClock, budget_ref: list[EditBudget], keep_booked: float = 0.0) -> None:
        self.clock, self.budget_ref, self.keep_booked = clock, budget_ref, keep_booked

    async def __call__(self, seconds: float) -> None:
        self.clock.t += seconds
        budget = self.budget_ref[0]
        while budget.backlog() < self.keep_booked:
            budget.reserve_global()
        await asyncio.sleep(0)


def budget_on_fake_time(keep_booked: float = 0.0) -> tuple[EditBudget, FakeClock]:
    clock = FakeClock()
    ref: list[EditBudget] = []
    budget = EditBudget(20, min_interval=1, clock=clock, sleep=FakeSleep(clock, ref, keep_booked))
    ref.append(budget)
    return budget, clock


async def test_a_spare_slot_waits_for_booked_edits():
    budget, clock = budget_on_fake_time()
    for _ in range(6):
        budget.reserve_global()  # 0.3 s of edits booked ahead
    start = clock.t
    await budget.acquire_spare()
    assert clock.t - start == pytest.approx(0.3)  # after them, not before
    assert budget.backlog() == pytest.approx(0.05)  # and it booked the next slot itself


async def test_a_spare_slot_waits_at_most_its_patience():
    budget, clock = budget_on_fake_time(keep_booked=0.2)  # steady progress edits keep the budget busy
    while budget.backlog() < 0.2:
        budget.reserve_global()
    start = clock.t
    async with asyncio.timeout(10):  # without patience it would wait for ever
        await budget.acquire_spare(patience=0.3)
    # at the deadline it books the next slot like any edit: behind the 0.2-0.25 s the others booked
    assert 0.3 + 0.2 <= clock.t - start <= 0.3 + 0.25 + 1e-9
