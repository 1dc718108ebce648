"""The Discord presenter after a job's final message (issue 15 item 2): late progress is dropped."""

from __future__ import annotations

from types import SimpleNamespace

from cogs.presenter import DiscordPresenter
from engine.base import ProgressUpdate
from storage.models import Job
from storage.params import JobParams


async def test_progress_after_the_failure_is_dropped_and_starts_no_sender():
    presenter = DiscordPresenter(SimpleNamespace(), edit_interval=0.2)
    edits: list[tuple[str, str]] = []

    async def record_edit(job, stage, *, content, **kwargs):
        edits.append((stage.name, content))

    presenter._edit = record_edit  # the Discord side is not under test here
    job = Job(user_id=1, prompt="a fox", params=JobParams(display="a fox"))
    await presenter.failed(job, "Timed out: it spent more than 15m 00s generating.")
    presenter.progress(job, ProgressUpdate(step=2, total=4))  # late, from the engine's last step

    assert [stage for stage, _ in edits] == ["FINAL"]
    assert presenter.budget.running == 0  # not registered again: other jobs' intervals stay as they are
    assert job.id not in presenter._messages  # no sender task left behind
