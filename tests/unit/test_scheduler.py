import asyncio
import itertools

from bot.fair_queue import QueueEntry
from bot.scheduler import Scheduler

_users = itertools.count()


def entry(job_id: str, priority: int = 0, user: str | None = None, mode: str = "fast", at: float = 0.0):
    return QueueEntry(job_id, user or f"user-{next(_users)}", "tier", priority, mode, at)


def scheduler() -> Scheduler:
    return Scheduler(clock=lambda: 0.0)


async def test_runs_in_fair_queue_order():
    sched = scheduler()
    started: list[str] = []
    gate = asyncio.Event()

    async def handler(job_id: str) -> None:
        started.append(job_id)
        await gate.wait()

    sched.submit(entry("first"))
    sched.start(1, handler)
    await asyncio.sleep(0.01)  # "first" is running; the rest queue behind it
    sched.submit(entry("low-a", priority=0, at=1))
    sched.submit(entry("high", priority=3, at=2))
    sched.submit(entry("relax", priority=3, mode="relax", at=0))
    sched.submit(entry("low-b", priority=0, at=3))
    assert [sched.position(j) for j in ("high", "low-a", "low-b", "relax")] == [1, 2, 3, 4]
    assert sched.position("first") is None
    gate.set()
    await asyncio.sleep(0.05)
    await sched.stop()
    assert started == ["first", "high", "low-a", "low-b", "relax"]


async def test_duplicate_submit_and_discard():
    sched = scheduler()
    ran: list[str] = []

    async def handler(job_id: str) -> None:
        ran.append(job_id)

    sched.submit(entry("a"))
    sched.submit(entry("a"))
    sched.submit(entry("b"))
    sched.discard("b")
    assert sched.waiting == 1
    sched.start(2, handler)
    await asyncio.sleep(0.05)
    await sched.stop()
    assert ran == ["a"]


async def test_a_crashing_handler_does_not_kill_the_worker():
    sched = scheduler()
    ran: list[str] = []

    async def handler(job_id: str) -> None:
        ran.append(job_id)
        if job_id == "bad":
            raise RuntimeError("boom")

    sched.submit(entry("bad", at=0))
    sched.submit(entry("good", at=1))
    sched.start(1, handler)
    await asyncio.sleep(0.05)
    await sched.stop()
    assert ran == ["bad", "good"]


async def test_workers_share_slots_and_respect_a_users_concurrency_cap():
    sched = scheduler()
    running: dict[str, int] = {"heavy": 0, "other": 0}
    peak = {"heavy": 0, "total": 0}

    async def handler(job_id: str) -> None:
        user = job_id.split("-")[0]
        running[user] += 1
        peak["heavy"] = max(peak["heavy"], running["heavy"])
        peak["total"] = max(peak["total"], sum(running.values()))
        await asyncio.sleep(0.02)
        running[user] -= 1

    for i in range(6):
        sched.submit(entry(f"heavy-{i}", user="heavy", at=i), max_concurrent=1)
    for i in range(3):
        sched.submit(entry(f"other-{i}", user="other", at=10 + i), max_concurrent=2)
    sched.start(3, handler)
    await asyncio.sleep(0.4)
    await sched.stop()
    assert peak == {"heavy": 1, "total": 3} and sched.waiting == 0


async def test_stop_waits_for_running_jobs_then_restart_works():
    sched = scheduler()
    finished: list[str] = []

    async def handler(job_id: str) -> None:
        await asyncio.sleep(0.1)
        finished.append(job_id)

    sched.submit(entry("a", at=0))
    sched.submit(entry("b", at=1))
    sched.start(1, handler)
    await asyncio.sleep(0.02)
    await sched.stop(grace=2)
    assert finished == ["a"] and sched.waiting == 1  # "b" stays queued for the next start
    sched.start(1, handler)
    await asyncio.sleep(0.2)
    await sched.stop()
    assert finished == ["a", "b"]


async def test_stop_gives_up_after_the_grace_period():
    sched = scheduler()

    async def handler(job_id: str) -> None:
        await asyncio.sleep(10)

    sched.submit(entry("slow"))
    sched.start(1, handler)
    await asyncio.sleep(0.02)
    async with asyncio.timeout(1):
        await sched.stop(grace=0.1)
    assert sched.running == set()


async def test_pause_holds_dispatch_and_resume_continues():
    sched = scheduler()
    ran: list[str] = []

    async def handler(job_id: str) -> None:
        ran.append(job_id)

    sched.start(1, handler)
    sched.pause()
    sched.submit(entry("a"))
    await asyncio.sleep(0.05)
    assert ran == [] and sched.paused and sched.position("a") == 1
    sched.resume()
    await asyncio.sleep(0.05)
    await sched.stop()
    assert ran == ["a"]
