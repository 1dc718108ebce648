"""The result buttons' custom_id scheme and views stay within Discord's limits; old ids keep matching."""

from __future__ import annotations

import re

from bot.results import BUTTON_ACTIONS as ACTIONS
from bot.results import action_of
from cogs.rendering import JobButton, RemixSubmit, remix_custom_id, result_view
from engine.base import Operation
from storage.models import Job, JobKind

JOB_ID = "f" * 32


def test_every_view_is_within_discords_limits():
    for kind in (JobKind.IMAGINE, JobKind.UPSCALE, JobKind.ENHANCE, JobKind.OUTPAINT):
        for count in (1, 4):
            view = result_view(Job(id=JOB_ID, user_id=1, kind=kind), count, used={"u:0", "r", "z2"})
            rows = {item.row for item in view.children}
            assert len(rows) <= 5 and all(sum(i.row == r for i in view.children) <= 5 for r in rows)
            ids = [item.custom_id for item in view.children]
            assert len(set(ids)) == len(ids) and all(1 <= len(i) <= 100 for i in ids)
            assert all(len(item.item.label or "") <= 80 for item in view.children)


def test_custom_ids_round_trip_and_old_ids_still_match():
    pattern = re.compile(JobButton.__discord_ui_compiled_template__.pattern)  # type: ignore[attr-defined]
    for old in (f"ib:u:{JOB_ID}:3", f"ib:v:{JOB_ID}:0", f"ib:r:{JOB_ID}"):
        assert pattern.fullmatch(old)
    for code in ACTIONS:
        match = pattern.fullmatch(f"ib:{code}:{JOB_ID}")
        assert match and match["action"] == code
    assert not pattern.fullmatch(f"ib:zz:{JOB_ID}")


def test_a_child_job_maps_back_to_its_button():
    child = Job(user_id=1, kind=JobKind.OUTPAINT, operation=Operation.PAN_LEFT.value, parent_index=0)
    assert action_of(child) == "pl"
    assert action_of(Job(user_id=1, kind=JobKind.VARIATION, operation="img2img", parent_index=2)) == "v:2"
    assert action_of(Job(user_id=1, kind=JobKind.VARIATION, operation="vary_strong", parent_index=0)) == "vx"
    assert action_of(Job(user_id=1, kind=JobKind.UPSCALE, parent_index=1)) == "u:1"


def test_a_remix_submit_is_read_from_the_interaction_data_alone():
    row = {"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": "a castle"}]}
    label = {"type": 18, "component": {"type": 4, "custom_id": "prompt", "value": "a ship"}}
    submit = RemixSubmit.parse({"custom_id": remix_custom_id("v", JOB_ID, 2), "components": [row]})
    assert submit == RemixSubmit("v", JOB_ID, 2, "a castle")
    submit = RemixSubmit.parse({"custom_id": remix_custom_id("r", JOB_ID), "components": [label]})
    assert submit == RemixSubmit("r", JOB_ID, None, "a ship")
    assert RemixSubmit.parse({"custom_id": remix_custom_id("vs", JOB_ID), "components": []}).text == ""
    for foreign in (remix_custom_id("u", JOB_ID, 0), f"ib:r:{JOB_ID}", "other:modal", ""):
        assert (
            RemixSubmit.parse({"custom_id": foreign, "components": [row]}) is None
        )  # not ours / not remixable
    assert RemixSubmit.parse(None) is None
