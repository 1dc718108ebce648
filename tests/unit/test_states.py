import pytest

from storage.states import TERMINAL_STATES, InvalidTransition, JobState, can_transition, check_transition

HAPPY_PATH = [
    JobState.DRAFT,
    JobState.SUBMITTED,
    JobState.QUEUED,
    JobState.PROCESSING,
    JobState.GENERATED,
    JobState.STORING,
    JobState.SUCCEEDED,
]


def test_happy_path_is_allowed_step_by_step():
    for current, following in zip(HAPPY_PATH, HAPPY_PATH[1:], strict=False):
        check_transition(current, following)


def test_no_skipping_and_no_going_back():
    assert not can_transition(JobState.QUEUED, JobState.SUCCEEDED)
    assert not can_transition(JobState.PROCESSING, JobState.QUEUED)
    with pytest.raises(InvalidTransition):
        check_transition(JobState.GENERATED, JobState.PROCESSING)


@pytest.mark.parametrize("state", [s for s in JobState if not s.terminal])
def test_cancel_fail_and_timeout_from_every_live_state(state):
    for end in (JobState.CANCELED, JobState.FAILED, JobState.TIMED_OUT):
        assert can_transition(state, end)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_are_final(state):
    assert not any(can_transition(state, target) for target in JobState)
    assert not can_transition(state, JobState.QUEUED, retry=True)


def test_retry_only_reenters_queued_from_work_in_memory():
    assert can_transition(JobState.PROCESSING, JobState.QUEUED, retry=True)
    assert can_transition(JobState.STORING, JobState.QUEUED, retry=True)
    assert not can_transition(JobState.DRAFT, JobState.QUEUED, retry=True)
    assert not can_transition(JobState.PROCESSING, JobState.GENERATED, retry=True)


def test_progress_per_state_is_monotonic_on_the_happy_path():
    values = [state.progress for state in HAPPY_PATH]
    assert values == sorted(values) and values[-1] == 100
