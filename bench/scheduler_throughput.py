"""Scheduler policy benchmark: bot.fair_queue.FairQueue cost per operation and fairness under load.

How it measures (everything in this process, single thread, no asyncio, no database):

1. Cost per operation. A FairQueue is filled with 10,000 jobs across 1,000 users (tiers free/basic/
   standard/pro, 20 % relax, default max_wait). Then, for --ops rounds, one push of a new job and one pop
   keep it at 10,000 jobs while the clock advances; each call is timed alone with perf_counter_ns. remove()
   (a random waiting job, then pushed back untimed) and position() (a random waiting job) are timed the same
   way on the full queue. Reported: median and p99 in microseconds.
2. Fairness. A discrete-event simulation: --slots engine slots, service time uniform in [--service-min,
   --service-max] seconds, Poisson arrivals per tier from a population of users per tier, the total rate set
   so that offered load / capacity = --load (default 1.0, i.e. ~100 % utilisation); --hours simulated. A job's
   wait is pop time - enqueued_at. Reported: p50/p95/max wait per tier and mode.
3. Aging bound. For every fast job the theorem of bot/fair_queue.py is checked: with h its head time and
   H = h + (p_max - p) * A, the wait from h is <= (p_max - p) * A + ceil((Q + 1) / slots) * service_max,
   Q = other non-empty user queues at H. Then the corollary on its own scenario: top-tier users who never
   run dry, saturating the engines, and a free job every 5 minutes.

    .venv/bin/python bench/scheduler_throughput.py
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import platform
import random
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.fair_queue import FairQueue, QueueEntry  # noqa: E402

TIERS = {"free": 0, "basic": 1, "standard": 2, "pro": 3}
# users per tier and jobs per user per hour relative weight: many free users, few busy pro users
POPULATION = {"free": (600, 1.0), "basic": (250, 2.0), "standard": (110, 4.0), "pro": (40, 8.0)}
RELAX_SHARE = {"free": 0.0, "basic": 0.0, "standard": 0.3, "pro": 0.3}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cost(ops: int, seed: int) -> None:
    rng = random.Random(seed)
    users = [(f"u{i}", list(TIERS)[i % 4]) for i in range(1000)]
    queue = FairQueue(aging_seconds_per_level=60.0)
    counter = 0
    now = 0.0

    def new_entry() -> QueueEntry:
        nonlocal counter
        counter += 1
        user, tier = rng.choice(users)
        mode = "relax" if rng.random() < 0.2 else "fast"
        return QueueEntry(f"j{counter}", user, tier, TIERS[tier], mode, now)

    for _ in range(10_000):
        now += 0.01
        queue.push(new_entry())
    push_ns, pop_ns, remove_ns, position_ns = [], [], [], []
    for _ in range(ops):
        now += 0.5
        entry = new_entry()
        t0 = time.perf_counter_ns()
        queue.push(entry)
        t1 = time.perf_counter_ns()
        queue.pop(now)
        t2 = time.perf_counter_ns()
        push_ns.append(t1 - t0)
        pop_ns.append(t2 - t1)
    assert len(queue) == 10_000
    ids = [e.job_id for e in queue.entries()]
    for _ in range(min(ops, 5000)):
        job_id = rng.choice(ids)
        t0 = time.perf_counter_ns()
        queue.remove(job_id)
        t1 = time.perf_counter_ns()
        remove_ns.append(t1 - t0)
        ids.remove(job_id)
    for _ in range(200):
        job_id = rng.choice(ids)
        t0 = time.perf_counter_ns()
        queue.position(job_id, now)
        position_ns.append(time.perf_counter_ns() - t0)
    print(f"## cost per operation: {len(queue) + min(ops, 5000):,} queued jobs at start, 1,000 users")
    print(f"{'op':<10}{'n':>8}{'median µs':>12}{'p99 µs':>10}")
    for name, values in (
        ("push", push_ns),
        ("pop", pop_ns),
        ("remove", remove_ns),
        ("position", position_ns),
    ):
        print(f"{name:<10}{len(values):>8}{pct(values, 0.5) / 1000:>12.1f}{pct(values, 0.99) / 1000:>10.1f}")
    print(
        "(push/pop: steady state at 10,000 jobs; remove: draining 10,000 -> 5,000 at random; "
        "position: random job in the remaining queue, the whole pop order simulated up to it)"
    )


class Sim:
    """Discrete-event simulation of slots pulling from a FairQueue, with a mirror of the user queues."""

    def __init__(self, queue: FairQueue, slots: int) -> None:
        self.queue, self.slots = queue, slots
        self.mirror: dict[tuple, deque[str]] = defaultdict(deque)  # (user, tier, mode) -> job ids
        self.head_time: dict[str, float] = {}
        self.entries: dict[str, QueueEntry] = {}
        self.popped_at: dict[str, float] = {}
        self.pop_times: list[float] = []
        self.nonempty_times: list[float] = [0.0]
        self.nonempty: list[int] = [0]

    def _record(self, now: float) -> None:
        count = sum(1 for q in self.mirror.values() if q)  # cheap enough: queues are few hundred
        self.nonempty_times.append(now)
        self.nonempty.append(count)

    def push(self, entry: QueueEntry, now: float) -> None:
        self.queue.push(entry)
        self.entries[entry.job_id] = entry
        q = self.mirror[(entry.user_id, entry.tier, entry.mode)]
        q.append(entry.job_id)
        if len(q) == 1:
            self.head_time[entry.job_id] = entry.enqueued_at
        self._record(now)

    def pop(self, now: float) -> QueueEntry | None:
        entry = self.queue.pop(now)
        if entry is None:
            return None
        q = self.mirror[(entry.user_id, entry.tier, entry.mode)]
        assert q.popleft() == entry.job_id, "FairQueue broke per-user FIFO"
        if q:
            self.head_time[q[0]] = now
        self.popped_at[entry.job_id] = now
        self.pop_times.append(now)
        self._record(now)
        return entry

    def check_bound(self, aging: float, service_max: float) -> tuple[int, int, float]:
        """(fast jobs checked, violations, max wait/bound) for the per-job theorem."""
        p_max = max(e.priority for e in self.entries.values())
        checked = violations = 0
        worst = 0.0
        for job_id, popped in self.popped_at.items():
            entry = self.entries[job_id]
            if entry.mode != "fast":
                continue
            h = self.head_time[job_id]
            big_h = h + (p_max - entry.priority) * aging
            at = bisect.bisect_right(self.nonempty_times, big_h) - 1
            others = max(0, self.nonempty[at] - (1 if big_h < popped else 0))
            bound = (p_max - entry.priority) * aging + math.ceil((others + 1) / self.slots) * service_max
            checked += 1
            worst = max(worst, (popped - h) / bound)
            violations += (popped - h) > bound + 1e-9
        return checked, violations, worst


def fairness(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    queue = FairQueue(aging_seconds_per_level=args.aging)
    sim = Sim(queue, args.slots)
    mean_service = (args.service_min + args.service_max) / 2
    capacity = args.slots / mean_service  # jobs per second
    weights = {tier: n * w for tier, (n, w) in POPULATION.items()}
    total = sum(weights.values())
    rates = {tier: args.load * capacity * w / total for tier, w in weights.items()}
    horizon = args.hours * 3600
    # merge Poisson arrivals of all tiers
    arrivals: list[tuple[float, str]] = []
    for tier, rate in rates.items():
        t = 0.0
        while (t := t + rng.expovariate(rate)) < horizon:
            arrivals.append((t, tier))
    arrivals.sort()
    free_at = [0.0] * args.slots
    busy = 0.0
    i = 0
    counter = 0
    while i < len(arrivals) or len(queue):
        slot = min(range(args.slots), key=free_at.__getitem__)
        if i < len(arrivals) and arrivals[i][0] <= free_at[slot]:
            t, tier = arrivals[i]
            i += 1
            counter += 1
            user = f"{tier}-{rng.randrange(POPULATION[tier][0])}"
            mode = "relax" if rng.random() < RELAX_SHARE[tier] else "fast"
            sim.push(QueueEntry(f"j{counter}", user, tier, TIERS[tier], mode, t), t)
            continue
        now = free_at[slot]
        if not len(queue):  # idle until the next arrival
            free_at[slot] = arrivals[i][0]
            continue
        sim.pop(now)
        service = rng.uniform(args.service_min, args.service_max)
        busy += service
        free_at[slot] = now + service
    end = max(free_at)
    waits: dict[tuple[str, str], list[float]] = defaultdict(list)
    for job_id, popped in sim.popped_at.items():
        e = sim.entries[job_id]
        waits[(e.tier, e.mode)].append(popped - e.enqueued_at)
    print(
        f"\n## fairness: {args.hours} h simulated, {args.slots} slots, service U[{args.service_min}, "
        f"{args.service_max}] s, offered load {args.load:.2f}, measured utilisation {busy / (args.slots * end):.1%}, "
        f"aging {args.aging} s/level, max_wait {queue.max_wait}"
    )
    print(
        "arrivals/h: " + ", ".join(f"{t} {r * 3600:.0f} ({POPULATION[t][0]} users)" for t, r in rates.items())
    )
    print(f"{'tier':<10}{'mode':<7}{'jobs':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for tier in TIERS:
        for mode in ("fast", "relax"):
            values = waits.get((tier, mode))
            if values:
                print(
                    f"{tier:<10}{mode:<7}{len(values):>7}{pct(values, 0.5):>9.1f}{pct(values, 0.95):>9.1f}"
                    f"{max(values):>9.1f}"
                )
    checked, violations, worst = sim.check_bound(args.aging, args.service_max)
    print(
        f"aging bound (per job, wait from head time <= (p_max - p)*A + ceil((Q+1)/slots)*s_max): "
        f"{checked} fast jobs checked, {violations} violations, worst wait/bound {worst:.2f}"
    )


def stream(args: argparse.Namespace) -> None:
    """Top-tier users who always have a job waiting saturate the engines; a free job arrives every 5 min."""
    users, aging, slots, s_min, s_max = 3, args.aging, args.slots, args.service_min, args.service_max
    rng = random.Random(args.seed + 1)
    queue = FairQueue(aging_seconds_per_level=aging)
    counter = 0

    def push(user: str, tier: str, now: float) -> None:
        nonlocal counter
        counter += 1
        queue.push(QueueEntry(f"j{counter}", user, tier, TIERS[tier], "fast", now))

    for u in range(users):
        for _ in range(3):
            push(f"pro{u}", "pro", 0.0)
    free_at = [0.0] * slots
    next_free, horizon = 0.0, args.hours * 3600
    waits: list[float] = []
    pro_pops = 0
    while True:
        slot = min(range(slots), key=free_at.__getitem__)
        now = free_at[slot]
        if now > horizon:
            break
        while next_free <= now:
            push(f"free{int(next_free)}", "free", next_free)
            next_free += 300.0
        entry = queue.pop(now)
        assert entry is not None
        if entry.tier == "pro":
            pro_pops += 1
            push(entry.user_id, "pro", now)  # the stream never runs dry
        else:
            waits.append(now - entry.enqueued_at)
        free_at[slot] = now + rng.uniform(s_min, s_max)
    bound = (TIERS["pro"] - TIERS["free"]) * aging + math.ceil((users + 1) / slots) * s_max
    print(
        f"\n## aging bound behind a continuous stream: {users} pro users never run dry, {slots} slots, "
        f"one free job every 300 s, {args.hours} h"
    )
    print(
        f"free jobs run: {len(waits)} (pro jobs run: {pro_pops}); free wait max {max(waits):.1f} s, "
        f"p95 {pct(waits, 0.95):.1f} s; bound (3 - 0)*{aging:g} + ceil(({users}+1)/{slots})*{s_max:g} = "
        f"{bound:.1f} s -> {'holds' if max(waits) <= bound else 'VIOLATED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--service-min", type=float, default=4.0)
    parser.add_argument("--service-max", type=float, default=12.0)
    parser.add_argument("--load", type=float, default=1.0)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--aging", type=float, default=60.0, help="aging_seconds_per_level")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"# bench/scheduler_throughput.py on {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, seed {args.seed}"
    )
    cost(args.ops, args.seed)
    fairness(args)
    stream(args)


if __name__ == "__main__":
    main()
