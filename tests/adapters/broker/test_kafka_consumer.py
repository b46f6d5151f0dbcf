"""The Kafka job consumer's settle path and poll pace, against a stand-in consumer that records what it is
asked to do (the whole broker against tansu is in test_kafka.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from loramill.adapters.broker.kafka_consumer import HeldMessage, JobConsumer


class RecordingConsumer:
    """Stands in for confluent-kafka's ``Consumer``: records commits, seeks and resumes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.calls.append(("commit", offsets[0].offset))

    def seek(self, partition: Any) -> None:
        self.calls.append(("seek", partition.offset))

    def resume(self, partitions: list[Any]) -> None:
        self.calls.append(("resume", partitions[0].partition))


def _holding(offset: int = 7, partition: int = 2) -> tuple[JobConsumer, HeldMessage]:
    consumer = JobConsumer({}, "jobs", cooperative=True, poll_seconds=0.2)  # its thread is never started
    held = HeldMessage(topic="jobs", partition=partition, offset=offset, key="t", value=b"{}",
                       held_at=time.monotonic())
    consumer._held[partition] = held
    return consumer, held


@pytest.mark.parametrize("commit", [True, False], ids=["ack", "give-back"])
def test_settle_commits_an_ack_and_seeks_before_resuming(commit: bool) -> None:
    consumer, held = _holding()
    kafka = RecordingConsumer()

    assert consumer._settle(kafka, held, held.offset + 1 if commit else held.offset, commit=commit)  # type: ignore[arg-type]

    expected = [("commit", 8), ("seek", 8)] if commit else [("seek", 7)]
    assert kafka.calls == [*expected, ("resume", 2)]
    assert 2 not in consumer._held


def test_poll_waits_briefly_while_a_quick_job_is_held() -> None:
    consumer, held = _holding()
    assert consumer._poll_timeout() <= 0.01  # an ack of a job that just started waits a few ms at most
    held.held_at -= 3600  # an hour-long training: the loop polls at its normal pace
    assert consumer._poll_timeout() == 0.2
    consumer._held.clear()
    assert consumer._poll_timeout() == 0.2
