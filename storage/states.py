"""The job state machine of PRODUCT.md §1: states, their progress, and every allowed transition.

This module is the one place that says which state may follow which. Transitions only go forward;
the single way back is a *retry* (a new attempt of the same job), which re-enters QUEUED from a
state whose work was lost with a dead process or engine, and is recorded with its attempt number.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    DRAFT = "DRAFT"  # created and validated, quota reserved, not yet queued
    SUBMITTED = "SUBMITTED"  # handed to the scheduler
    QUEUED = "QUEUED"  # waiting for a free engine slot
    PROCESSING = "PROCESSING"  # the engine is denoising; step/total and previews flow
    GENERATED = "GENERATED"  # images exist on the engine side, not yet in our storage
    STORING = "STORING"  # results are being written to the image store and posted
    SUCCEEDED = "SUCCEEDED"  # images stored, message posted, quota charged
    FAILED = "FAILED"  # terminal: the reason is kept in ``error``
    TIMED_OUT = "TIMED_OUT"  # terminal: a per-state time limit passed
    CANCELED = "CANCELED"  # terminal: the user or an admin canceled it

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def progress(self) -> int:
        """The nominal progress percentage the state implies (PROCESSING refines it by step)."""
        return STATE_PROGRESS.get(self, 0)


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELED})

STATE_PROGRESS = {
    JobState.DRAFT: 0,
    JobState.SUBMITTED: 15,
    JobState.QUEUED: 30,
    JobState.PROCESSING: 30,
    JobState.GENERATED: 85,
    JobState.STORING: 95,
    JobState.SUCCEEDED: 100,
}

_FORWARD: dict[JobState, frozenset[JobState]] = {
    JobState.DRAFT: frozenset({JobState.SUBMITTED}),
    JobState.SUBMITTED: frozenset({JobState.QUEUED}),
    JobState.QUEUED: frozenset({JobState.PROCESSING}),
    JobState.PROCESSING: frozenset({JobState.GENERATED}),
    JobState.GENERATED: frozenset({JobState.STORING}),
    JobState.STORING: frozenset({JobState.SUCCEEDED}),
}
"""The happy path. FAILED / TIMED_OUT / CANCELED are reachable from every non-terminal state."""

RETRYABLE_STATES = frozenset(
    {JobState.SUBMITTED, JobState.QUEUED, JobState.PROCESSING, JobState.GENERATED, JobState.STORING}
)
"""States whose work lives only in memory: after a crash the job is queued again as a new attempt.
(STORING only when none of its images had been recorded yet; otherwise it resumes publishing.)"""


class InvalidTransition(Exception):
    """A state change the machine does not allow (a bug, or a race lost to another writer)."""


def can_transition(current: JobState, target: JobState, *, retry: bool = False) -> bool:
    if current.terminal:
        return False
    if retry:
        return target is JobState.QUEUED and current in RETRYABLE_STATES
    if target in (JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELED):
        return True
    return target in _FORWARD.get(current, frozenset())


def check_transition(current: JobState, target: JobState, *, retry: bool = False) -> None:
    if not can_transition(current, target, retry=retry):
        kind = "retry" if retry else "transition"
        raise InvalidTransition(f"{kind} {current} -> {target} is not allowed")
