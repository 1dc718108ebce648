"""The scheduling policy: which waiting job runs next. Pure, synchronous, deterministic; time is passed in.

``FairQueue`` orders jobs by tier priority, fast before relax, aging and round-robin between users. It holds
``QueueEntry`` records only; the database stays the truth and the queue is rebuilt from it at start-up by
pushing every waiting job again with its original ``enqueued_at`` (aging survives a restart).

Ordering rule
-------------
Jobs wait in *user queues*: one FIFO per (user, tier, priority, mode). Only the oldest job of each user queue,
its **head**, competes; the others wait behind it (per-user FIFO). A head's *head time* ``h`` is when it became
the head: ``max(enqueued_at, time the previous job of its user queue was popped)``. Its **key** is::

    key = h - priority * aging_seconds_per_level          (smaller runs first)

which is the linear aging rule ``effective = priority + (now - h) / aging_seconds_per_level`` written without
``now``: at any one instant, ``effective_a > effective_b  <=>  key_a < key_b``. So a job gains one priority
level per ``aging_seconds_per_level`` seconds of waiting, and keys never need recomputing. ``pop(now)`` takes:

1. an **overdue** head first: one that has waited ``max_wait`` seconds as a head (``max_wait`` maps a tier
   name or a mode to seconds; the smaller applicable value counts), earliest deadline ``h + max_wait`` first;
2. otherwise the **fast** head with the smallest ``(key, -priority, head order)``;
3. otherwise the **relax** head with the smallest ``(key, -priority, head order)``.

Relax rule: relax jobs run only when no fast job is waiting, *or* once they have waited ``max_wait["relax"]``
(default ``DEFAULT_MAX_WAIT``: 30 minutes) as their user's next job; then they run earliest-deadline-first
ahead of fast jobs, so relax always runs eventually. Pass ``max_wait={}`` for strict "idle time only" relax.

Round-robin falls out of the head time: when a user's job is popped at ``now``, their next job's head time is
``now``, behind every other user's head that was already waiting at the same effective level (ties go to the
head that became a head first). One user's 10 queued jobs therefore hold back another user's first job by at
most one job; users of one tier alternate; a heavy user's backlog does not collect aging credit, because its
jobs only start aging when they reach the front of their user queue.

Aging bound (no ``max_wait`` caps, ``A = aging_seconds_per_level``)
------------------------------------------------------------------
Let job ``j`` of priority ``p`` become a head at ``h_j``, so ``key_j = h_j - p*A``, and let
``H = h_j + (p_max - p) * A``. Assume ``enqueued_at`` is the push time (live traffic).

* A head exposed at time ``s`` has ``h >= s`` and priority ``<= p_max``, so ``key >= s - p_max*A``. A head
  exposed after ``H`` has ``key > key_j`` and is never popped before ``j``.
* Each user queue has one head at a time, and a queue popped after ``H`` exposes its next head after ``H``.
  So after ``H`` at most ``Q`` jobs are popped before ``j``, where ``Q`` is the number of *other* non-empty
  user queues at ``H`` (of any tier; only those with key <= key_j count, and only once each).
* With ``c`` engine slots, each job taking at most ``s`` seconds and a pop whenever a slot frees, at least
  ``c`` pops happen in any ``s`` seconds while jobs wait, so ``j`` is popped within ``ceil((Q + 1) / c) * s``
  after ``H``. Hence::

      wait_j (from h_j) <= (p_max - p) * A + ceil((Q + 1) / c) * s

  Behind a continuous stream of top-tier jobs from ``U`` users on one slot: ``(p_max - p)*A + (U + 1)*s``
  (``+ 2*s`` for a single user's stream: the job running when ``j`` catches up, then the top-tier head
  exposed just before ``H``). For relax jobs the same argument starts at the deadline ``h + max_wait["relax"]``
  among overdue heads: ``wait <= max_wait + ceil((D + 1) / c) * s`` with ``D`` the other overdue heads with
  earlier deadlines. Caps below the aging bound make overdue jobs cut in (one per user queue per cap period);
  set them at or above the aging bound and they act only as a backstop.

Complexity
----------
Three binary heaps hold one record per head (fast keys, relax keys, deadlines of capped heads), with lazy
deletion: a record is valid while its token is its user queue's current head token. With ``n`` waiting jobs
and ``u`` user queues: ``push`` O(log u) (O(1) when the user already has a head), ``pop`` amortised
O(log u), ``remove`` O(log u) for a head or O(k) in a user queue of ``k`` jobs, ``len``/``waiting_for`` O(1).
Stale records are at most two per head change and the heaps are compacted when they exceed twice the live
heads. ``position`` simulates pops at ``now`` on copies: O(u + r log u) for a job ``r`` places from the
front (~35 ms for the last of 5,000 jobs in CPython); ``positions`` answers many jobs in one such pass. ``bench/scheduler_throughput.py`` measures this with 10,000 jobs across 1,000 users.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from storage.models import Mode

MODES: tuple[str, ...] = tuple(Mode)
DEFAULT_MAX_WAIT: dict[str, float] = {Mode.RELAX: 1800.0}

_QueueKey = tuple[str, str, int, str]  # (user_id, tier, priority, mode)
# A head record: (sort fields..., token, queue key). Class heaps sort by (key, -priority, token);
# the deadline heap by (deadline, key, -priority, token).
_ClassRecord = tuple[float, int, int, _QueueKey]
_DeadlineRecord = tuple[float, float, int, int, _QueueKey]
_R = TypeVar("_R", bound=tuple[Any, ...])


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    user_id: str
    tier: str  # tier name, for display and for max_wait lookups
    priority: int  # from the tier: higher runs first
    mode: str  # "fast" | "relax"
    enqueued_at: float  # seconds on the queue's clock (time.monotonic, time.time, a test clock...)


@dataclass
class _UserQueue:
    jobs: deque[QueueEntry] = field(default_factory=deque)
    last_pop: float = -math.inf  # when this queue last had a job popped
    token: int = -1  # token of the current head's records
    head_time: float = 0.0


class FairQueue:
    """Waiting jobs in the order they should run; see the module docstring for the rule and its bound."""

    def __init__(
        self,
        aging_seconds_per_level: float = 60.0,
        max_wait: dict[str, float] | None = None,
    ) -> None:
        if not aging_seconds_per_level > 0:
            raise ValueError("aging_seconds_per_level must be > 0")
        self.aging_seconds_per_level = float(aging_seconds_per_level)
        self.max_wait: dict[str, float] = dict(DEFAULT_MAX_WAIT if max_wait is None else max_wait)
        if any(not value >= 0 for value in self.max_wait.values()):
            raise ValueError("max_wait values must be >= 0 seconds")
        self._queues: dict[_QueueKey, _UserQueue] = {}
        self._where: dict[str, _QueueKey] = {}  # job id -> its user queue
        self._entries: dict[str, QueueEntry] = {}  # push order
        self._per_user: Counter[str] = Counter()
        self._fast: list[_ClassRecord] = []
        self._relax: list[_ClassRecord] = []
        self._deadlines: list[_DeadlineRecord] = []
        self._next_token = 0

    # ---- public API ---------------------------------------------------------------------------------

    def push(self, entry: QueueEntry) -> None:
        """Add a waiting job. A job id already waiting, or an unknown mode, is a ``ValueError``."""
        if entry.job_id in self._entries:
            raise ValueError(f"job {entry.job_id} is already queued")
        if entry.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {entry.mode!r}")
        qkey = (entry.user_id, entry.tier, entry.priority, entry.mode)
        queue = self._queues.get(qkey)
        if queue is None:
            queue = self._queues[qkey] = _UserQueue()
        queue.jobs.append(entry)
        self._where[entry.job_id] = qkey
        self._entries[entry.job_id] = entry
        self._per_user[entry.user_id] += 1
        if len(queue.jobs) == 1:
            self._expose(qkey, queue)

    def pop(self, now: float) -> QueueEntry | None:
        """Take the job that should run now, or ``None`` when nothing waits."""
        qkey = self._choose(now)
        if qkey is None:
            return None
        queue = self._queues[qkey]
        entry = queue.jobs.popleft()
        queue.last_pop = now
        self._forget(entry)
        if queue.jobs:
            self._expose(qkey, queue)
        else:
            del self._queues[qkey]
        self._compact()
        return entry

    def remove(self, job_id: str) -> bool:
        """Drop a waiting job (canceled, timed out); ``False`` when it is not waiting."""
        qkey = self._where.get(job_id)
        if qkey is None:
            return False
        queue = self._queues[qkey]
        entry = self._entries[job_id]
        if queue.jobs[0].job_id == job_id:
            queue.jobs.popleft()
            if queue.jobs:
                self._expose(qkey, queue)  # the next job keeps the queue's place: it was not served
            else:
                del self._queues[qkey]
        else:
            queue.jobs.remove(entry)
        self._forget(entry)
        self._compact()
        return True

    def position(self, job_id: str, now: float) -> int | None:
        """1-based place of a waiting job in the order ``pop(now)`` would produce now; ``None`` if absent."""
        if job_id not in self._entries:
            return None
        for place, entry in enumerate(self.order(now), start=1):
            if entry.job_id == job_id:
                return place
        raise AssertionError("unreachable: a waiting job is always in the order")

    def positions(self, now: float, job_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Places of several jobs (default: all) from one simulated pass; absent jobs are left out."""
        wanted = set(self._entries) if job_ids is None else {j for j in job_ids if j in self._entries}
        found: dict[str, int] = {}
        if not wanted:
            return found
        for place, entry in enumerate(self.order(now), start=1):
            if entry.job_id in wanted:
                found[entry.job_id] = place
                if len(found) == len(wanted):
                    break
        return found

    def order(self, now: float) -> Iterator[QueueEntry]:
        """Waiting jobs in the order repeated ``pop(now)`` calls would return them; nothing is changed."""
        fast, relax, deadlines = list(self._fast), list(self._relax), list(self._deadlines)
        cursors: dict[_QueueKey, int] = {}
        tokens: dict[_QueueKey, int | None] = {}
        sim_tokens = itertools.count(self._next_token)  # after every real head: ties go to real heads
        while True:
            qkey = self._choose(now, fast, relax, deadlines, tokens)
            if qkey is None:
                return
            queue = self._queues[qkey]
            cursor = cursors.get(qkey, 0)
            yield queue.jobs[cursor]
            cursor += 1
            cursors[qkey] = cursor
            if cursor < len(queue.jobs):
                token = next(sim_tokens)
                tokens[qkey] = token
                nxt = queue.jobs[cursor]
                self._records(qkey, nxt, max(nxt.enqueued_at, now), token, fast, relax, deadlines)
            else:
                tokens[qkey] = None

    def entries(self) -> list[QueueEntry]:
        """All waiting jobs, in push order."""
        return list(self._entries.values())

    def waiting_for(self, user_id: str) -> int:
        """How many jobs this user has waiting (all tiers and modes)."""
        return self._per_user.get(user_id, 0)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    # ---- internals ----------------------------------------------------------------------------------

    def _cap(self, entry: QueueEntry) -> float:
        return min(self.max_wait.get(entry.tier, math.inf), self.max_wait.get(entry.mode, math.inf))

    def _expose(self, qkey: _QueueKey, queue: _UserQueue) -> None:
        """Make the queue's first job its head: new head time, new records; old records go stale."""
        head = queue.jobs[0]
        queue.head_time = max(head.enqueued_at, queue.last_pop)
        queue.token = self._next_token
        self._next_token += 1
        self._records(qkey, head, queue.head_time, queue.token, self._fast, self._relax, self._deadlines)

    def _records(
        self,
        qkey: _QueueKey,
        head: QueueEntry,
        head_time: float,
        token: int,
        fast: list[_ClassRecord],
        relax: list[_ClassRecord],
        deadlines: list[_DeadlineRecord],
    ) -> None:
        key = head_time - head.priority * self.aging_seconds_per_level
        heapq.heappush(fast if head.mode == Mode.FAST else relax, (key, -head.priority, token, qkey))
        cap = self._cap(head)
        if cap != math.inf:
            heapq.heappush(deadlines, (head_time + cap, key, -head.priority, token, qkey))

    def _valid(self, token: int, qkey: _QueueKey, sim: dict[_QueueKey, int | None] | None) -> bool:
        if sim is not None and qkey in sim:
            return sim[qkey] == token
        queue = self._queues.get(qkey)
        return queue is not None and queue.token == token

    def _choose(
        self,
        now: float,
        fast: list[_ClassRecord] | None = None,
        relax: list[_ClassRecord] | None = None,
        deadlines: list[_DeadlineRecord] | None = None,
        sim: dict[_QueueKey, int | None] | None = None,
    ) -> _QueueKey | None:
        """The user queue whose head runs next (stale records on top of the heaps are dropped)."""
        fast = self._fast if fast is None else fast
        relax = self._relax if relax is None else relax
        deadlines = self._deadlines if deadlines is None else deadlines
        while deadlines and not self._valid(deadlines[0][3], deadlines[0][4], sim):
            heapq.heappop(deadlines)
        if deadlines and deadlines[0][0] <= now:
            return heapq.heappop(deadlines)[4]
        for heap in (fast, relax):
            while heap and not self._valid(heap[0][2], heap[0][3], sim):
                heapq.heappop(heap)
            if heap:
                return heapq.heappop(heap)[3]
        return None

    def _forget(self, entry: QueueEntry) -> None:
        del self._where[entry.job_id]
        del self._entries[entry.job_id]
        self._per_user[entry.user_id] -= 1
        if not self._per_user[entry.user_id]:
            del self._per_user[entry.user_id]

    def _compact(self) -> None:
        limit = 2 * len(self._queues) + 64
        if len(self._fast) > limit:
            self._fast = self._live(self._fast)
        if len(self._relax) > limit:
            self._relax = self._live(self._relax)
        if len(self._deadlines) > limit:
            self._deadlines = self._live(self._deadlines)

    def _live(self, heap: list[_R]) -> list[_R]:
        live = [record for record in heap if self._valid(record[-2], record[-1], None)]
        heapq.heapify(live)
        return live
