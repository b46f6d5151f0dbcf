"""The broker port's behaviours as one table, run through one tester for every adapter (peft style).

An adapter's test module builds a ``BrokerHarness`` (how to make a broker on queues of its own and
how to read what it dead-lettered) and runs every row of ``BEHAVIOURS`` through ``run_behaviour``.
Adding a broker is adding a harness; adding a port behaviour is adding a row.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from loramill.adapters.broker.base import Broker, Delivery


@dataclass
class BrokerHarness:
    """How the behaviours exercise one adapter."""

    name: str
    # namespace -> a broker whose queues / topics / group are named after it; the same namespace
    # twice gives a second worker on the same queue.
    make: Callable[[str], Broker]
    # (broker, how many to wait for) -> [(body, reason)] set aside by dead_letter.
    dead_letters: Callable[[Broker, int], list[tuple[bytes, str]]]
    supports_priority: bool
    receive_timeout: float = 20.0  # first receive includes a Kafka group join
    quiet_timeout: float = 2.0  # how long "nothing more arrives" is watched
    second_worker_timeout: float = 5.0  # a new worker's wait for a job that must not come (joins included)
    # (broker, delivery) -> None: what a worker does with a job, ending in its ack. The sql broker weighs
    # users by the jobs they started in the job store, so its harness starts each job there first.
    run_job: Callable[[Broker, Delivery], None] = lambda broker, delivery: broker.ack(delivery)
    # How long a published job takes to reach a worker's look-ahead (Kafka fetches in the background); the
    # flood check waits this long after each job it publishes, so it counts order, not fetch races.
    visible_after: float = 0.0


@dataclass
class Behaviour:
    """One row of the table: a named check of the port."""

    name: str
    check: Callable[[BrokerHarness, Broker, str], None]


def selfix_job(task_id: str, priority: int = 1) -> bytes:
    """A training job exactly as Selfix writes it (docs/contracts.md)."""
    return json.dumps(
        {
            "taskId": task_id,
            "userId": "user-1",
            "images": ["users/user-1/images/image1.jpg", "users/user-1/images/image2.jpg"],
            "configurationParams": {"epochs": 10, "learningRate": 8e-4, "networkDim": 4},
            "priority": priority,
        }
    ).encode()


def selfix_event(task_id: str, status: str) -> bytes:
    """A status event exactly as Selfix reads it (docs/contracts.md)."""
    return json.dumps({"taskId": task_id, "userId": "user-1", "status": status}).encode()


def receive_one(harness: BrokerHarness, broker: Broker) -> Delivery:
    delivery = broker.receive(harness.receive_timeout)
    assert delivery is not None, f"{harness.name}: no job within {harness.receive_timeout}s"
    return delivery


def task_of(delivery: Delivery) -> str:
    return str(json.loads(delivery.body)["taskId"])


# -- the behaviours ------------------------------------------------------------------------------


def check_receive_nothing_when_empty(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    started = time.monotonic()
    assert broker.receive(1.0) is None
    assert time.monotonic() - started < 5.0  # the timeout is honoured, not a connect or join delay


def check_ack_is_final(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    broker.publish_job(selfix_job("task-ack"), task_id="task-ack")
    delivery = receive_one(harness, broker)
    assert delivery.body == selfix_job("task-ack")
    assert not delivery.redelivered
    broker.ack(delivery)
    assert broker.receive(harness.quiet_timeout) is None
    # Another worker on the same queue does not get it either.
    broker.close()
    other = harness.make(namespace)
    try:
        assert other.receive(harness.second_worker_timeout) is None
    finally:
        other.close()


def check_nack_requeue_redelivers(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    broker.publish_job(selfix_job("task-nack"), task_id="task-nack")
    first = receive_one(harness, broker)
    broker.nack(first, requeue=True)
    again = receive_one(harness, broker)
    assert again.body == first.body
    assert again.redelivered
    broker.ack(again)
    assert broker.receive(harness.quiet_timeout) is None


def check_dead_letter_sets_poison_aside(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    poison = b'{"taskId": "task-poison", "images": "not a list'
    broker.publish_job(poison, task_id="task-poison")
    broker.publish_job(selfix_job("task-good"), task_id="task-good")
    seen: list[bytes] = []
    for _ in range(2):
        delivery = receive_one(harness, broker)
        seen.append(delivery.body)
        if delivery.body == poison:
            broker.dead_letter(delivery, "invalid_input: body is not valid JSON")
        else:
            broker.ack(delivery)
    assert sorted(seen) == sorted([poison, selfix_job("task-good")])
    assert broker.receive(harness.quiet_timeout) is None
    assert harness.dead_letters(broker, 1) == [(poison, "invalid_input: body is not valid JSON")]


def check_priority_orders_jobs(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    if not harness.supports_priority:
        pytest.skip(f"{harness.name} has no message priorities")
    broker.publish_job(selfix_job("task-low", 1), task_id="task-low", priority=1)
    broker.publish_job(selfix_job("task-high", 9), task_id="task-high", priority=9)
    order = []
    for _ in range(2):
        delivery = receive_one(harness, broker)
        order.append(task_of(delivery))
        broker.ack(delivery)
    assert order == ["task-high", "task-low"]


def check_events_round_trip(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    sent = [selfix_event("task-ev", "processing"), selfix_event("task-ev", "completed")]
    for body in sent:
        broker.publish_event(body, task_id="task-ev")
    received: list[bytes] = []
    deadline = time.monotonic() + harness.receive_timeout
    while len(received) < len(sent) and time.monotonic() < deadline:
        received += broker.consume_events(1.0)
    assert received == sent


def check_queue_depth_counts_waiting_jobs(harness: BrokerHarness, broker: Broker, namespace: str) -> None:
    for task in ("task-d1", "task-d2"):
        broker.publish_job(selfix_job(task), task_id=task)
    depth = broker.queue_depth()
    if depth is None:
        pytest.skip(f"{harness.name} cannot tell its queue depth")
    assert depth == 2
    for _ in range(2):
        broker.ack(receive_one(harness, broker))
    assert broker.queue_depth() == 0


def user_job(task_id: str, user: str) -> bytes:
    """A training job of ``user`` in Selfix's format."""
    return json.dumps({"taskId": task_id, "userId": user, "images": [f"users/{user}/images/a.jpg"],
                       "configurationParams": {"epochs": 1}}).encode()


def waits_behind_flood(harness: BrokerHarness, broker: Broker, user: str, flood: int, asks: int) -> list[int]:
    """``user`` submits ``asks`` jobs, one at a time, after "alice" queued ``flood``; each wait is counted in
    jobs served until his is (1: his came next). The worker runs each job as soon as it gets it."""
    for i in range(flood):
        broker.publish_job(user_job(f"alice-{flood}-{i}", "alice"), task_id=f"alice-{flood}-{i}")
    waits = []
    for i in range(asks):
        mine = f"{user}-{i}"
        broker.publish_job(user_job(mine, user), task_id=mine)
        time.sleep(harness.visible_after)
        served = 0
        while True:
            delivery = receive_one(harness, broker)
            harness.run_job(broker, delivery)
            served += 1
            if task_of(delivery) == mine:
                break
        waits.append(served)
    return waits


def p95(values: list[int]) -> int:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def check_flood_leaves_another_users_wait_as_when_idle(harness: BrokerHarness, broker: Broker,
                                                       namespace: str) -> None:
    # Issue 15's acceptance: one user's flood leaves another user's p95 wait within 2x of an idle system.
    idle = waits_behind_flood(harness, broker, "carol", flood=0, asks=8)
    flooded = waits_behind_flood(harness, broker, "bob", flood=40, asks=8)
    assert p95(idle) == 1
    assert p95(flooded) <= 2 * p95(idle), flooded  # first come, first served: he would wait behind all 40


BEHAVIOURS = [
    Behaviour("receive_nothing_when_empty", check_receive_nothing_when_empty),
    Behaviour("ack_is_final", check_ack_is_final),
    Behaviour("nack_requeue_redelivers", check_nack_requeue_redelivers),
    Behaviour("dead_letter_sets_poison_aside", check_dead_letter_sets_poison_aside),
    Behaviour("priority_orders_jobs", check_priority_orders_jobs),
    Behaviour("events_round_trip", check_events_round_trip),
    Behaviour("queue_depth_counts_waiting_jobs", check_queue_depth_counts_waiting_jobs),
    Behaviour("flood_leaves_another_users_wait_as_when_idle", check_flood_leaves_another_users_wait_as_when_idle),
]


def run_behaviour(harness: BrokerHarness, behaviour: Behaviour) -> None:
    """Run one row against a broker on fresh queues, closing it whatever happens."""
    namespace = f"conf-{behaviour.name}-{uuid.uuid4().hex[:8]}"
    broker = harness.make(namespace)
    try:
        behaviour.check(harness, broker, namespace)
    finally:
        broker.close()
