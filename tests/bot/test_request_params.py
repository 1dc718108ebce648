"""Prompt knobs (``--stop``, ``--chaos``, ``::`` weights) travel from the prompt through the job's params
to the engine request, and stay right for old jobs, retries and remixes."""

from __future__ import annotations

from bot.prompt import parse_prompt
from storage.models import JobKind
from storage.params import JobParams
from storage.states import JobState
from tests.bot.support import acknowledge, run_until_done, service


async def test_stop_reaches_the_engine(parts):
    jobs, presenter = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9 --stop 50"))
    assert job.params.stop == 0.5
    assert (await jobs._request_for(job)).stop == 0.5
    (done,) = await run_until_done(jobs, [job.id])
    assert done.state == JobState.SUCCEEDED
    assert presenter.of(job.id, "progress") == [(1, 3), (2, 3)]  # 3 steps, stopped after ceil(1.5)


async def test_no_stop_is_a_full_run(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --seed 9"))
    assert job.params.stop == 1.0
    request = await jobs._request_for(job)
    assert request.stop == 1.0
    job.params = JobParams.model_validate({"display": "a fox"})  # a row saved before --stop existed
    assert (await jobs._request_for(job)).stop == 1.0


async def test_weights_and_chaos_reach_the_engine(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("castle::2 fog::-0.5 --chaos 40 --no rain"))
    assert job.params.chaos == 40 and job.params.prompt_parts == (("castle", 2.0), ("fog", -0.5))
    request = await jobs._request_for(job)
    assert request.chaos == 40 and request.prompt_parts == (("castle", 2.0), ("fog", -0.5))
    assert request.prompt == "castle" and request.negative_prompt == "rain"  # fog is a weight, not a --no

    plain = await jobs.submit_imagine(10, acknowledge, parse_prompt("a fox --no rain"))
    assert plain.params.chaos is None and plain.params.prompt_parts == ()
    assert "chaos" not in plain.params.stored() and "prompt_parts" not in plain.params.stored()
    request = await jobs._request_for(plain)
    assert (request.chaos, request.prompt_parts, request.negative_prompt) == (0, (), "rain")


async def test_a_job_saved_before_weights_keeps_its_plain_reading(parts):
    jobs, _ = service(parts)
    job = await jobs.submit_imagine(10, acknowledge, parse_prompt("castle::2 fog::-0.5 --no rain"))
    job.params = JobParams.model_validate(
        {k: v for k, v in job.params.stored().items() if k != "prompt_parts"}
    )
    request = await jobs._request_for(job)
    assert (request.prompt, request.negative_prompt, request.prompt_parts) == ("castle", "rain, fog", ())


async def test_remix_replaces_the_weights_with_the_new_texts(parts):
    jobs, _ = service(parts)
    parent = await jobs.submit_imagine(10, acknowledge, parse_prompt("castle::2 fog::-0.5 --chaos 40"))
    (parent,) = await run_until_done(jobs, [parent.id])
    child = await jobs.submit_child(
        parent, JobKind.REROLL, None, 10, acknowledge, remix=parse_prompt("a lighthouse --chaos 90")
    )
    request = await jobs._request_for(child)
    assert (request.prompt, request.prompt_parts, request.chaos) == ("a lighthouse", (), 90)
    kept = await jobs.submit_child(parent, JobKind.REROLL, None, 10, acknowledge)
    assert (await jobs._request_for(kept)).prompt_parts == (("castle", 2.0), ("fog", -0.5))


def test_a_batched_job_is_charged_its_share_not_the_wall_time():
    from PIL import Image

    from bot.jobs import JobService
    from engine.base import ENGINE_SECONDS
    from storage.models import Job

    images = [Image.new("RGB", (8, 8)) for _ in range(4)]
    grid = Job(user_id=1, kind=JobKind.IMAGINE, prompt="x", width=64, height=64, steps=3, seed=1)
    assert JobService._charged_seconds(grid, images, wall=5.0) == 5.0  # no share reported: the wall time
    for image in images:
        image.info[ENGINE_SECONDS] = 1.25
    assert JobService._charged_seconds(grid, images, wall=5.0) == 1.25
    assert JobService._charged_seconds(grid, images, wall=1.0) == 1.0  # never more than it took
    upscale = Job(user_id=1, kind=JobKind.UPSCALE, prompt="x", width=64, height=64, steps=3, seed=1)
    assert JobService._charged_seconds(upscale, images, wall=5.0) == 0.0
