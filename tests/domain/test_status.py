"""The job status machine: forward only, terminal states final."""

from __future__ import annotations

import pytest

from loramill.domain.status import TERMINAL, JobKind, JobStatus, can_transition, sources_of


@pytest.mark.parametrize(("current", "new"), [
    ("queued", "processing"), ("queued", "canceled"), ("queued", "failed"),
    ("processing", "completed"), ("processing", "failed"), ("processing", "canceled"),
    ("processing", "queued"), ("processing", "processing"),
])
def test_allow_transition_forward(current: str, new: str) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("new", list(JobStatus))
def test_refuse_transition_out_of_terminal_state(terminal: JobStatus, new: JobStatus) -> None:
    assert not can_transition(terminal, new)
    assert terminal.terminal


def test_refuse_transition_skipping_processing() -> None:
    assert not can_transition("queued", "completed")


def test_refuse_transition_with_unknown_status() -> None:
    assert not can_transition("queued", "done")
    assert not can_transition("started", "processing")


def test_list_sources_of_completed() -> None:
    assert sources_of("completed") == {JobStatus.PROCESSING}
    assert sources_of(JobStatus.CANCELED) == {JobStatus.QUEUED, JobStatus.PROCESSING}


def test_job_kind_has_one_public_word_each_and_the_api_lists_them() -> None:
    import typing

    from loramill.gateway.api.schemas import PublicKind
    from loramill.jobs.contracts import GenerationJob, TrainingJob

    assert (TrainingJob.kind, GenerationJob.kind) == (JobKind.TRAIN, JobKind.GENERATE) == ("train", "generate")
    assert set(typing.get_args(PublicKind)) == {kind.public for kind in JobKind} == {"training", "generation"}
    assert all(JobKind.from_public(kind.public) is kind for kind in JobKind)
