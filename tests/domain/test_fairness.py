"""The fair-share policy every broker uses: which waiting job goes next, and who was served lately."""

from __future__ import annotations

import pytest

from loramill.domain.fairness import Candidate, ServedLog, choose, user_of

A, B, ANON = Candidate("alice"), Candidate("bob"), Candidate(None)


@pytest.mark.parametrize(
    "candidates, served, expected",
    [
        ([A, A, B], {}, 0),  # nobody served yet: arrival order
        ([A, A, B], {"alice": 3}, 2),  # alice's flood: bob's job overtakes it
        ([A, B, A, B], {"alice": 2, "bob": 1}, 1),  # the first job of the user served least
        ([A, B], {"alice": 1, "bob": 1}, 0),  # a tie keeps arrival order
        ([A, ANON], {"alice": 5}, 1),  # a job naming no user is a user of its own, never served
        ([Candidate("alice", 0), Candidate("alice", 9), B], {"alice": 7}, 1),  # priority before fairness
    ],
    ids=["arrival", "flood", "least-served", "tie", "anonymous", "priority"],
)
def test_choose_the_oldest_job_of_the_user_served_least(candidates: list[Candidate], served: dict[str, int],
                                                        expected: int) -> None:
    assert choose(candidates, served) == expected


def test_choose_refuses_an_empty_head() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        choose([], {})


@pytest.mark.parametrize(
    "body, user",
    [(b'{"taskId": "t", "userId": "u-1"}', "u-1"), (b'{"request_id": "r", "params": {}}', None),
     (b'{"userId": 7}', None), (b"not json", None), (b"[1]", None)],
)
def test_user_of_reads_the_user_id_a_message_names(body: bytes, user: str | None) -> None:
    assert user_of(body) == user


def test_served_log_forgets_jobs_older_than_its_window() -> None:
    now = [0.0]
    log = ServedLog(window=600, clock=lambda: now[0])
    log.record("alice")
    log.record("alice")
    log.record(None)  # not counted
    now[0] = 300
    log.record("bob")
    assert log.counts() == {"alice": 2, "bob": 1}
    now[0] = 700  # alice's two jobs are older than 10 minutes now
    assert log.counts() == {"bob": 1}
