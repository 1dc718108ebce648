"""``--stop`` travels from the prompt through the job's params to the engine request."""

from __future__ import annotations

from bot.prompt import parse_prompt
from storage.states import JobState
from tests.bot.support import acknowledge, run_until_done, service


async def test_stop_reaches_the_engine(parts):
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9 --stop 50"))
    assert job.params["stop"] == 0.5
    assert (await jobs._request_for(job)).stop == 0.5
    (done,) = await run_until_done(jobs, [job.id])
    assert done.state == JobState.SUCCEEDED
    assert presenter.of(job.id, "progress") == [(1, 3), (2, 3)]  # 3 steps, stopped after ceil(1.5)


async def test_no_stop_is_a_full_run(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9"))
    assert job.params["stop"] == 1.0
    request = await jobs._request_for(job)
    assert request.stop == 1.0
    job.params = {k: v for k, v in job.params.items() if k != "stop"}  # a job saved before --stop existed
    assert (await jobs._request_for(job)).stop == 1.0
