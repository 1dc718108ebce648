"""bot.fair_queue: examples of the ordering rule, a model-based state machine, and the aging bound."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bot.fair_queue import FairQueue, QueueEntry

TIERS = {"free": 0, "basic": 1, "standard": 2, "pro": 3}


def job(job_id: str, user: str, tier: str = "free", mode: str = "fast", at: float = 0.0) -> QueueEntry:
    return QueueEntry(job_id, user, tier, TIERS[tier], mode, at)


def drain(queue: FairQueue, now: float) -> list[str]:
    out = []
    while (entry := queue.pop(now)) is not None:
        out.append(entry.job_id)
    return out


# ---- examples ------------------------------------------------------------------------------------------


def test_higher_tier_first_then_arrival():
    queue = FairQueue(aging_seconds_per_level=60)
    queue.push(job("f", "u1", "free", at=0))
    queue.push(job("b", "u2", "basic", at=1))
    queue.push(job("p", "u3", "pro", at=2))
    queue.push(job("p2", "u4", "pro", at=3))
    assert drain(queue, 5) == ["p", "p2", "b", "f"]


def test_fast_before_relax():
    queue = FairQueue(aging_seconds_per_level=60)
    queue.push(job("relax-pro", "u1", "pro", "relax", at=0))
    queue.push(job("fast-free", "u2", "free", "fast", at=500))
    assert drain(queue, 600) == ["fast-free", "relax-pro"]


def test_relax_runs_alone_and_after_its_max_wait():
    queue = FairQueue(aging_seconds_per_level=60, max_wait={"relax": 100})
    queue.push(job("r", "u1", "free", "relax", at=0))
    queue.push(job("f", "u2", "pro", "fast", at=50))
    assert queue.position("r", now=99) == 2
    assert queue.position("r", now=100) == 1  # overdue: it has waited max_wait["relax"]
    assert drain(queue, 100) == ["r", "f"]


def test_relax_is_idle_time_only_without_a_cap():
    queue = FairQueue(aging_seconds_per_level=1, max_wait={})
    queue.push(job("r", "relaxer", "pro", "relax", at=0))
    for t in range(1, 1000):  # a continuous stream of fast jobs: relax never runs
        queue.push(job(f"f{t}", "fast", "free", at=t))
        assert queue.pop(t).job_id == f"f{t}"  # type: ignore[union-attr]
    assert queue.pop(1000).job_id == "r"  # type: ignore[union-attr]


def test_aging_lets_a_long_waiting_low_tier_job_overtake():
    queue = FairQueue(aging_seconds_per_level=60)  # free -> pro is 3 levels = 180 s
    queue.push(job("free", "u1", "free", at=0))
    queue.push(job("pro-soon", "u2", "pro", at=179))
    queue.push(job("pro-late", "u3", "pro", at=181))
    assert drain(queue, 200) == ["pro-soon", "free", "pro-late"]


def test_round_robin_between_users():
    queue = FairQueue(aging_seconds_per_level=60)
    for i in range(10):
        queue.push(job(f"a{i}", "A", at=i))
    queue.push(job("b0", "B", at=10))
    assert queue.position("b0", now=10) == 2
    assert drain(queue, 10) == ["a0", "b0"] + [f"a{i}" for i in range(1, 10)]


def test_users_of_one_tier_alternate():
    queue = FairQueue(aging_seconds_per_level=60)
    for i in range(3):
        queue.push(job(f"a{i}", "A", at=0))
    for i in range(3):
        queue.push(job(f"b{i}", "B", at=1))
    assert [queue.pop(t).job_id for t in range(2, 8)] == ["a0", "b0", "a1", "b1", "a2", "b2"]  # type: ignore[union-attr]


def test_fifo_within_a_user():
    queue = FairQueue(aging_seconds_per_level=60)
    for i in range(5):
        queue.push(job(f"a{i}", "A", "pro", at=i))
    assert drain(queue, 10) == [f"a{i}" for i in range(5)]


def test_remove():
    queue = FairQueue(aging_seconds_per_level=60)
    for i in range(3):
        queue.push(job(f"a{i}", "A", at=i))
    queue.push(job("b0", "B", at=5))
    assert queue.remove("a1") and queue.remove("a0")  # a middle job, then the head
    assert not queue.remove("a0") and not queue.remove("nope")
    assert len(queue) == 2 and queue.waiting_for("A") == 1
    assert queue.position("a0", 10) is None
    assert drain(queue, 10) == ["a2", "b0"]  # a2 kept A's place: a removal is not service
    assert len(queue) == 0 and queue.waiting_for("A") == 0 and queue.pop(11) is None


def test_position_agrees_with_pop_order():
    queue = FairQueue(aging_seconds_per_level=30, max_wait={"relax": 200, "free": 400})
    at = 0.0
    for i in range(40):
        tier = list(TIERS)[i % 4]
        queue.push(job(f"j{i}", f"u{i % 7}", tier, "relax" if i % 5 == 0 else "fast", at=at))
        at += 17.0
    now = at + 100
    positions = {e.job_id: queue.position(e.job_id, now) for e in queue.entries()}
    assert queue.positions(now) == positions
    assert queue.positions(now, ["j3", "j7", "missing"]) == {"j3": positions["j3"], "j7": positions["j7"]}
    order = drain(queue, now)
    assert sorted(positions.values()) == list(range(1, 41))
    assert order == sorted(positions, key=lambda j: positions[j])


def test_restored_jobs_keep_their_age_and_bad_input_is_refused():
    queue = FairQueue(aging_seconds_per_level=60)
    queue.push(job("old-free", "u1", "free", at=-1000))  # rebuilt from the database after a restart
    queue.push(job("new-pro", "u2", "pro", at=0))
    assert queue.pop(0).job_id == "old-free"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        queue.push(job("new-pro", "u2", "pro", at=1))
    with pytest.raises(ValueError):
        queue.push(QueueEntry("x", "u", "free", 0, "turbo", 0))
    with pytest.raises(ValueError):
        FairQueue(aging_seconds_per_level=0)
    assert "new-pro" in queue and [e.job_id for e in queue.entries()] == ["new-pro"]


# ---- a plain model of the rule, written independently of the heaps ------------------------------------


@dataclass
class ModelQueue:
    jobs: list[QueueEntry] = field(default_factory=list)
    last_pop: float = -math.inf
    head_time: float = 0.0
    head_order: int = 0


class Model:
    """The ordering rule of bot.fair_queue, by linear scans: slow, obviously right."""

    def __init__(self, aging: float, max_wait: dict[str, float]) -> None:
        self.aging, self.max_wait = aging, max_wait
        self.queues: dict[tuple, ModelQueue] = {}
        self.order_counter = 0

    def _expose(self, q: ModelQueue) -> None:
        q.head_time = max(q.jobs[0].enqueued_at, q.last_pop)
        q.head_order = self.order_counter
        self.order_counter += 1

    def push(self, e: QueueEntry) -> None:
        q = self.queues.setdefault((e.user_id, e.tier, e.priority, e.mode), ModelQueue())
        q.jobs.append(e)
        if len(q.jobs) == 1:
            self._expose(q)

    def pop(self, now: float) -> QueueEntry | None:
        def rank(k):
            q = self.queues[k]
            head = q.jobs[0]
            return (q.head_time - head.priority * self.aging, -head.priority, q.head_order)

        def deadline(k):
            q = self.queues[k]
            head = q.jobs[0]
            cap = min(self.max_wait.get(head.tier, math.inf), self.max_wait.get(head.mode, math.inf))
            return q.head_time + cap

        keys = list(self.queues)
        overdue = [k for k in keys if deadline(k) <= now]
        fast = [k for k in keys if k[3] == "fast"]
        pool = overdue or fast or keys
        if not pool:
            return None
        chosen = min(pool, key=lambda k: (deadline(k), *rank(k)) if overdue else rank(k))
        q = self.queues[chosen]
        entry = q.jobs.pop(0)
        q.last_pop = now
        if q.jobs:
            self._expose(q)
        else:
            del self.queues[chosen]
        return entry

    def remove(self, job_id: str) -> None:
        for k, q in list(self.queues.items()):
            for i, e in enumerate(q.jobs):
                if e.job_id == job_id:
                    del q.jobs[i]
                    if not q.jobs:
                        del self.queues[k]
                    elif i == 0:
                        self._expose(q)
                    return

    def order(self, now: float) -> list[str]:
        clone = copy.deepcopy(self)
        out = []
        while (e := clone.pop(now)) is not None:
            out.append(e.job_id)
        return out


MAX_WAITS = [None, {}, {"relax": 30.0}, {"free": 100.0, "relax": 50.0}, {"basic": 0.0}]


class FairQueueMachine(RuleBasedStateMachine):
    @initialize(aging=st.sampled_from([0.5, 10.0, 60.0]), max_wait=st.sampled_from(MAX_WAITS))
    def setup(self, aging, max_wait):
        self.queue = FairQueue(aging_seconds_per_level=aging, max_wait=max_wait)
        self.model = Model(aging, self.queue.max_wait)
        self.now = 0.0
        self.next_id = 0
        self.waiting: dict[str, QueueEntry] = {}
        self.seq: dict[str, int] = {}
        self.gone: set[str] = set()  # popped or removed
        self.last_popped_seq: dict[tuple, int] = {}

    @rule(dt=st.floats(0, 120, allow_nan=False))
    def advance(self, dt):
        self.now += dt

    @rule(
        user=st.sampled_from(["a", "b", "c", "d"]),
        tier=st.sampled_from(list(TIERS)),
        mode=st.sampled_from(["fast", "relax"]),
        restored_age=st.none() | st.floats(0, 300, allow_nan=False),
    )
    def push(self, user, tier, mode, restored_age):
        job_id = f"j{self.next_id}"
        at = self.now if restored_age is None else self.now - restored_age
        entry = QueueEntry(job_id, user, tier, TIERS[tier], mode, at)
        self.seq[job_id] = self.next_id
        self.next_id += 1
        self.queue.push(entry)
        self.model.push(entry)
        self.waiting[job_id] = entry

    @rule()
    def pop(self):
        got = self.queue.pop(self.now)
        expected = self.model.pop(self.now)
        assert got == expected
        if got is None:
            assert not self.waiting
            return
        assert got.job_id in self.waiting and got.job_id not in self.gone  # never lost, never twice
        del self.waiting[got.job_id]
        self.gone.add(got.job_id)
        fifo = (got.user_id, got.tier, got.mode)
        assert self.seq[got.job_id] > self.last_popped_seq.get(fifo, -1)  # per-user FIFO
        self.last_popped_seq[fifo] = self.seq[got.job_id]

    @precondition(lambda self: self.next_id > 0)
    @rule(data=st.data())
    def remove(self, data):
        job_id = f"j{data.draw(st.integers(0, self.next_id))}"
        assert self.queue.remove(job_id) == (job_id in self.waiting)
        if job_id in self.waiting:
            self.model.remove(job_id)
            del self.waiting[job_id]
            self.gone.add(job_id)

    @invariant()
    def counts(self):
        if not hasattr(self, "queue"):
            return
        assert len(self.queue) == len(self.waiting)
        assert {e.job_id for e in self.queue.entries()} == set(self.waiting)
        for user in "abcd":
            assert self.queue.waiting_for(user) == sum(e.user_id == user for e in self.waiting.values())

    @invariant()
    def positions_match_the_pop_order(self):
        if not hasattr(self, "queue"):
            return
        expected = self.model.order(self.now)
        assert [e.job_id for e in self.queue.order(self.now)] == expected
        clone = copy.deepcopy(self.queue)
        assert drain(clone, self.now) == expected  # order() agrees with real pops
        for place, job_id in enumerate(expected, start=1):
            assert self.queue.position(job_id, self.now) == place
        for job_id in list(self.gone)[:3]:
            assert self.queue.position(job_id, self.now) is None


FairQueueMachine.TestCase.settings = settings(max_examples=200, deadline=None, stateful_step_count=40)
TestFairQueueMachine = FairQueueMachine.TestCase


# ---- the aging bound under a continuous stream of high-tier jobs ----------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    aging=st.floats(0.5, 100),
    high_users=st.integers(1, 4),
    high_tiers=st.lists(st.sampled_from(["basic", "standard", "pro"]), min_size=4, max_size=4),
    low_tier=st.sampled_from(["free", "basic"]),
    slots=st.integers(1, 3),
    service=st.lists(st.floats(0.1, 20), min_size=1, max_size=30),
    backlog=st.integers(1, 6),
    low_at=st.floats(0, 200),
    extra=st.lists(st.booleans(), min_size=1, max_size=50),
)
def test_aging_bound_behind_a_continuous_high_tier_stream(
    aging, high_users, high_tiers, low_tier, slots, service, backlog, low_at, extra
):
    """Engines saturated by top-tier users who always have jobs waiting; one low-tier job arrives."""
    queue = FairQueue(aging_seconds_per_level=aging, max_wait={})
    s_max = max(service)
    tiers = high_tiers[:high_users]
    p_max = max(TIERS[t] for t in tiers)
    p_low = TIERS[low_tier]
    counter = 0

    def push_high(user: int, now: float) -> None:
        nonlocal counter
        counter += 1
        queue.push(job(f"h{counter}", f"high{user}", tiers[user], at=now))

    for user in range(high_users):
        for _ in range(backlog):
            push_high(user, 0.0)
    free_at = [0.0] * slots
    low_pushed = False
    pops = 0
    while True:
        slot = min(range(slots), key=free_at.__getitem__)
        now = free_at[slot]
        if not low_pushed and low_at <= now:
            queue.push(job("low", "low-user", low_tier, at=low_at))
            low_pushed = True
        entry = queue.pop(now)
        assert entry is not None
        pops += 1
        if entry.job_id == "low":
            wait = now - low_at
            bound = (p_max - p_low) * aging + math.ceil((high_users + 1) / slots) * s_max
            assert wait <= bound + 1e-6, (wait, bound)
            return
        user = int(entry.user_id.removeprefix("high"))
        push_high(user, now)  # the stream never runs dry
        if extra[pops % len(extra)]:
            push_high((user + 1) % high_users, now)
        free_at[slot] = now + service[pops % len(service)]
        assert pops < 100_000
