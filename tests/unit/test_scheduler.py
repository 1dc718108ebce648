import asyncio

from bot.scheduler import Scheduler


async def test_runs_in_priority_then_arrival_order():
    scheduler = Scheduler()
    started: list[str] = []
    gate = asyncio.Event()

    async def handler(job_id: str) -> None:
        started.append(job_id)
        await gate.wait()

    scheduler.submit("first", priority=5)
    scheduler.start(1, handler)
    await asyncio.sleep(0.01)  # "first" is running; the rest queue behind it
    for job_id, priority in [("low-a", 5), ("high", 1), ("low-b", 5)]:
        scheduler.submit(job_id, priority)
    assert [scheduler.position(j) for j in ("high", "low-a", "low-b")] == [1, 2, 3]
    assert scheduler.position("first") is None
    gate.set()
    await asyncio.sleep(0.05)
    await scheduler.stop()
    assert started == ["first", "high", "low-a", "low-b"]


async def test_duplicate_submit_and_discard():
    scheduler = Scheduler()
    ran: list[str] = []

    async def handler(job_id: str) -> None:
        ran.append(job_id)

    scheduler.submit("a")
    scheduler.submit("a")
    scheduler.submit("b")
    scheduler.discard("b")
    assert scheduler.waiting == 1
    scheduler.start(2, handler)
    await asyncio.sleep(0.05)
    await scheduler.stop()
    assert ran == ["a"]


async def test_a_crashing_handler_does_not_kill_the_worker():
    scheduler = Scheduler()
    ran: list[str] = []

    async def handler(job_id: str) -> None:
        ran.append(job_id)
        if job_id == "bad":
            raise RuntimeError("boom")

    scheduler.submit("bad")
    scheduler.submit("good")
    scheduler.start(1, handler)
    await asyncio.sleep(0.05)
    await scheduler.stop()
    assert ran == ["bad", "good"]


async def test_workers_share_slots():
    scheduler = Scheduler()
    running = 0
    peak = 0

    async def handler(job_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    for i in range(6):
        scheduler.submit(str(i))
    scheduler.start(2, handler)
    await asyncio.sleep(0.2)
    await scheduler.stop()
    assert peak == 2 and scheduler.waiting == 0


async def test_stop_waits_for_running_jobs_then_restart_works():
    scheduler = Scheduler()
    finished: list[str] = []

    async def handler(job_id: str) -> None:
        await asyncio.sleep(0.1)
        finished.append(job_id)

    scheduler.submit("a")
    scheduler.submit("b")
    scheduler.start(1, handler)
    await asyncio.sleep(0.02)
    await scheduler.stop(grace=2)
    assert finished == ["a"] and scheduler.waiting == 1  # "b" stays queued for the next start
    scheduler.start(1, handler)
    await asyncio.sleep(0.2)
    await scheduler.stop()
    assert finished == ["a", "b"]


async def test_stop_gives_up_after_the_grace_period():
    scheduler = Scheduler()

    async def handler(job_id: str) -> None:
        await asyncio.sleep(10)

    scheduler.submit("slow")
    scheduler.start(1, handler)
    await asyncio.sleep(0.02)
    async with asyncio.timeout(1):
        await scheduler.stop(grace=0.1)
    assert scheduler.running == set()


async def test_pause_holds_dispatch_and_resume_continues():
    scheduler = Scheduler()
    ran: list[str] = []

    async def handler(job_id: str) -> None:
        ran.append(job_id)

    scheduler.start(1, handler)
    scheduler.pause()
    scheduler.submit("a")
    await asyncio.sleep(0.05)
    assert ran == [] and scheduler.paused and scheduler.position("a") == 1
    scheduler.resume()
    await asyncio.sleep(0.05)
    await scheduler.stop()
    assert ran == ["a"]
