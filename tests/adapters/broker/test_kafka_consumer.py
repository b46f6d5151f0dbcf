"""The Kafka job consumer's look-ahead, fair choice, settle path and poll pace, against stand-ins that record
what they are asked to do (the whole broker against tansu is in test_kafka.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loramill.adapters.broker.kafka_consumer import JobConsumer, _Partition


class RecordingConsumer:
    """Stands in for confluent-kafka's ``Consumer``: records commits, seeks, pauses and resumes."""

    def __init__(self, partitions: tuple[int, ...] = (0, 1)) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.partitions = partitions

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.calls.append(("commit", (offsets[0].partition, offsets[0].offset)))

    def seek(self, partition: Any) -> None:
        self.calls.append(("seek", (partition.partition, partition.offset)))

    def pause(self, partitions: list[Any]) -> None:
        self.calls.append(("pause", sorted(tp.partition for tp in partitions)))

    def resume(self, partitions: list[Any]) -> None:
        self.calls.append(("resume", sorted(tp.partition for tp in partitions)))

    def assignment(self) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition("jobs", p) for p in self.partitions]


class FakeMessage:
    """A fetched job message of ``user`` (what ``Consumer.poll`` returns)."""

    def __init__(self, partition: int, offset: int, user: str, timestamp: int) -> None:
        self._partition, self._offset, self._timestamp = partition, offset, timestamp
        self._value = json.dumps({"taskId": f"{user}-{offset}", "userId": user}).encode()

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return json.loads(self._value)["taskId"].encode()

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, self._timestamp


def _consumer(lookahead: int = 64, partitions: tuple[int, ...] = (0, 1)) -> JobConsumer:
    consumer = JobConsumer({}, "jobs", cooperative=True, poll_seconds=0.2, lookahead=lookahead)  # never started
    for p in partitions:
        consumer._partitions[p] = _Partition()
    return consumer


def _fetch(consumer: JobConsumer, *messages: tuple[int, int, str]) -> None:
    for n, (partition, offset, user) in enumerate(messages):
        message = FakeMessage(partition, offset, user, timestamp=1000 + len(consumer._lookahead) + n)
        consumer._hold(message)  # type: ignore[arg-type]


def test_next_hands_out_the_user_served_least_before_a_flood() -> None:
    consumer = _consumer()
    _fetch(consumer, *[(i % 2, i // 2, "alice") for i in range(10)], (0, 5, "bob"))

    first, second, third = (consumer.next(0) for _ in range(3))

    assert first is not None and second is not None and third is not None
    assert (first.user, second.user, third.user) == ("alice", "bob", "alice")  # bob waited for one job, not ten
    assert (first.partition, first.offset) == (0, 0) and (third.partition, third.offset) == (1, 0)  # alice in order


def test_ack_out_of_order_commits_only_past_the_oldest_unsettled() -> None:
    consumer, kafka = _consumer(partitions=(0,)), RecordingConsumer((0,))
    _fetch(consumer, (0, 0, "alice"), (0, 1, "alice"), (0, 2, "bob"))
    a0, bob = consumer.next(0), consumer.next(0)
    assert a0 is not None and bob is not None and bob.offset == 2

    assert consumer._settle(kafka, bob, commit=True)  # type: ignore[arg-type]
    assert kafka.calls == []  # offsets 0 and 1 are not done: a crash now must redeliver them
    assert consumer._settle(kafka, a0, commit=True)  # type: ignore[arg-type]
    assert kafka.calls == [("commit", (0, 1))]  # 1 is still waiting in the look-ahead

    a1 = consumer.next(0)
    assert a1 is not None and consumer._settle(kafka, a1, commit=True)  # type: ignore[arg-type]
    assert kafka.calls[-1] == ("commit", (0, 3))
    assert not consumer._settle(kafka, a1, commit=True)  # type: ignore[arg-type]  # settled once only


def test_give_back_puts_the_message_back_in_its_place_as_redelivered() -> None:
    consumer, kafka = _consumer(), RecordingConsumer()
    _fetch(consumer, (0, 0, "alice"), (1, 0, "alice"))
    first = consumer.next(0)
    assert first is not None

    assert consumer._settle(kafka, first, commit=False)  # type: ignore[arg-type]

    again = consumer.next(0)
    assert again is first and again.redelivered and kafka.calls == []


def test_revoked_partition_drops_its_look_ahead_and_its_late_ack() -> None:
    consumer, kafka = _consumer(), RecordingConsumer()
    _fetch(consumer, (0, 0, "alice"), (0, 1, "alice"), (1, 0, "bob"))
    held = consumer.next(0)
    assert held is not None and held.partition == 0

    from confluent_kafka import TopicPartition

    consumer._on_revoke(kafka, [TopicPartition("jobs", 0)])  # type: ignore[arg-type]

    assert held.lost and not consumer._settle(kafka, held, commit=True)  # type: ignore[arg-type]
    rest = consumer.next(0)
    assert rest is not None and rest.partition == 1 and consumer.next(0) is None


def test_full_look_ahead_pauses_the_partitions_with_their_share_waiting() -> None:
    consumer, kafka = _consumer(lookahead=8), RecordingConsumer()  # two partitions: a share of 4 each
    _fetch(consumer, *[(0, i, "alice") for i in range(4)], (1, 0, "bob"))
    consumer._pace(kafka)  # type: ignore[arg-type]
    assert kafka.calls == []  # 5 of 8: not full, everything keeps coming

    _fetch(consumer, *[(0, i, "alice") for i in range(4, 7)])
    consumer._pace(kafka)  # type: ignore[arg-type]
    assert kafka.calls == [("pause", [0])]  # full: partition 0 has its share waiting, partition 1 goes on
    for _ in range(3):  # alice's first, bob's, then alice's
        assert consumer.next(0) is not None
    consumer._pace(kafka)  # type: ignore[arg-type]
    assert len(kafka.calls) == 1  # 5 of partition 0's 7 still waiting, 5 of 8 in all

    assert consumer.next(0) is not None
    consumer._pace(kafka)  # type: ignore[arg-type]  # the look-ahead is half empty
    # It goes on right after what was fetched from it, with a seek (see _pace).
    assert kafka.calls[1:] == [("seek", (0, 7)), ("resume", [0])]


def test_message_fetched_again_after_a_pause_is_not_held_twice() -> None:
    consumer = _consumer()
    _fetch(consumer, (0, 0, "alice"), (0, 1, "alice"), (0, 1, "alice"))
    assert len(consumer._lookahead) == 2


@pytest.mark.parametrize("age, expected", [(0.0, "short"), (3600.0, 0.2)])
def test_poll_waits_briefly_while_a_quick_job_is_out(age: float, expected: object) -> None:
    consumer = _consumer()
    assert consumer._poll_timeout() == 0.2  # nothing out: the normal pace
    _fetch(consumer, (0, 0, "alice"))
    held = consumer.next(0)
    assert held is not None
    held.held_at -= age
    if expected == "short":
        assert consumer._poll_timeout() <= 0.01  # an ack of a job that just started waits a few ms at most
    else:
        assert consumer._poll_timeout() == expected  # an hour-long training: the loop polls at its normal pace
