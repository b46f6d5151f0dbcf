"""The job status machine (docs/contracts.md, "Job status"): queued → processing → completed | failed | canceled.

Terminal states are final: once a job is completed, failed or canceled nothing overwrites it, so a
late worker (an expired lease, a duplicate delivery) can never turn a canceled job into a completed
one or a completed job into a failed one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class JobKind(StrEnum):
    """What a job does. The values are what the queue, the store, metrics and ``LORAMILL_JOB_KINDS`` use;
    ``public`` is the word the HTTP API shows (``kind`` of a job, ``?kind=``), kept as its clients know it."""

    TRAIN = "train"
    GENERATE = "generate"

    @property
    def public(self) -> Literal["training", "generation"]:
        """``training`` or ``generation``: the API's word for this kind."""
        return "training" if self is JobKind.TRAIN else "generation"

    @classmethod
    def from_public(cls, word: str) -> JobKind:
        """The kind the API calls ``word`` (``training`` → ``TRAIN``)."""
        return next(kind for kind in cls if kind.public == word)


class AttemptStart(StrEnum):
    """What became of a worker's try to start an attempt at a job (the store's answer)."""

    STARTED = "started"  # the job is processing under this worker now
    BUSY = "busy"  # a live worker is running it: this is a duplicate copy
    FINISHED = "finished"  # already terminal: only its outcome is published again


class JobStatus(StrEnum):
    """Where a job is in its life. The values are the wire strings of the ``status`` field."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True for completed, failed and canceled: states nothing may leave."""
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})

# processing → processing is a redelivery (a worker died, its lease expired and another worker took
# the job: attempts go up); processing → queued is a retry handed back to the queue after a
# transient error. A queued job may fail without ever running (its payload is invalid) or be canceled.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.PROCESSING: frozenset({JobStatus.PROCESSING, JobStatus.QUEUED, *TERMINAL}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def can_transition(current: JobStatus | str, new: JobStatus | str) -> bool:
    """Whether a job in ``current`` may move to ``new``; unknown status strings are never allowed."""
    try:
        return JobStatus(new) in ALLOWED[JobStatus(current)]
    except ValueError:
        return False


def sources_of(new: JobStatus | str) -> frozenset[JobStatus]:
    """The states from which ``new`` can be reached (used to make the store's update atomic)."""
    target = JobStatus(new)
    return frozenset(s for s, targets in ALLOWED.items() if target in targets)
