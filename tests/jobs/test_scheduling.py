"""Grouping queued generation jobs by adapter: fewer switches, and no job overtaken past the bound."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from loramill.jobs.scheduling import AdapterScheduler, adapter_key, order_by_adapter, switches


@dataclass(frozen=True)
class Job:
    n: int
    lora: str


def key(job: Job) -> str:
    return job.lora


def overtaken(order: list[Job]) -> dict[int, int]:
    """For each job, how many jobs that arrived after it ran before it."""
    return {job.n: sum(1 for other in order[:i] if other.n > job.n) for i, job in enumerate(order)}


def test_order_by_adapter_groups_interleaved_jobs() -> None:
    jobs = [Job(i, "ab"[i % 2]) for i in range(8)]
    order = order_by_adapter(jobs, key, max_overtaken=10)
    assert [j.lora for j in order] == list("aaaabbbb")
    assert switches(order, key) == 2 < switches(jobs, key) == 8


def test_order_by_adapter_bound_zero_is_fifo() -> None:
    jobs = [Job(i, "abc"[i % 3]) for i in range(9)]
    assert order_by_adapter(jobs, key, max_overtaken=0) == jobs


@pytest.mark.parametrize("bound", [1, 3, 8, 20])
def test_order_by_adapter_never_overtakes_past_bound(bound: int) -> None:
    rng = random.Random(bound)
    weights = [1 / (k + 1) for k in range(20)]  # Zipf-like popularity over 20 adapters
    jobs = [Job(i, f"lora{rng.choices(range(20), weights)[0]}") for i in range(300)]
    order = order_by_adapter(jobs, key, max_overtaken=bound)
    assert sorted(j.n for j in order) == list(range(300))
    assert max(overtaken(order).values()) <= bound
    assert switches(order, key) < switches(jobs, key)


def test_order_by_adapter_keeps_arrival_order_within_adapter() -> None:
    rng = random.Random(0)
    jobs = [Job(i, rng.choice("abcd")) for i in range(100)]
    order = order_by_adapter(jobs, key, max_overtaken=5)
    for lora in "abcd":
        ns = [j.n for j in order if j.lora == lora]
        assert ns == sorted(ns)


def test_order_by_adapter_continues_current_adapter_first() -> None:
    jobs = [Job(0, "a"), Job(1, "b"), Job(2, "a")]
    assert [j.n for j in order_by_adapter(jobs, key, current="b")] == [1, 0, 2]


def test_scheduler_prefers_resident_adapter_when_switching() -> None:
    scheduler = AdapterScheduler(key=key, max_overtaken=4)
    for job in (Job(0, "a"), Job(1, "b"), Job(2, "c")):
        scheduler.add(job)
    assert scheduler.next(resident={"c"}).n == 2
    assert len(scheduler) == 2


def test_scheduler_takes_jobs_arriving_while_it_runs() -> None:
    scheduler = AdapterScheduler(key=key, max_overtaken=2)
    scheduler.add(Job(0, "a"))
    scheduler.add(Job(1, "b"))
    assert scheduler.next().n == 0
    scheduler.add(Job(2, "a"))
    scheduler.add(Job(3, "a"))
    scheduler.add(Job(4, "a"))
    assert [scheduler.next().n for _ in range(4)] == [2, 3, 1, 4]  # job 1 overtaken twice, then it runs


def test_scheduler_rejects_negative_bound_and_empty_next() -> None:
    with pytest.raises(ValueError, match="max_overtaken"):
        AdapterScheduler(key=key, max_overtaken=-1)
    with pytest.raises(IndexError):
        AdapterScheduler(key=key).next()


def test_adapter_key_ignores_order_and_weights() -> None:
    @dataclass
    class Ref:
        id: str
        weight: float

    assert adapter_key([Ref("b", 0.5), Ref("a", 1.0)]) == adapter_key([Ref("a", 0.2), Ref("b", 1)]) == ("a", "b")
    assert adapter_key([]) == ()


def _batches(jobs: list[Job], bound: int, max_size: int, arrive_every: int = 0) -> list[list[Job]]:
    """Drain ``jobs`` through ``next_batch``; with ``arrive_every``, that many arrive before each batch."""
    scheduler: AdapterScheduler[Job] = AdapterScheduler(key=key, max_overtaken=bound)
    pending = list(jobs)
    batches = []
    if not arrive_every:
        for job in pending:
            scheduler.add(job)
        pending = []
    while pending or len(scheduler):
        for _ in range(arrive_every):
            if pending:
                scheduler.add(pending.pop(0))
        batches.append(scheduler.next_batch(max_size))
    return batches


@pytest.mark.parametrize(("bound", "max_size", "arrive_every"), [(0, 8, 0), (3, 4, 0), (16, 8, 0), (16, 8, 3),
                                                                  (5, 2, 2)])
def test_next_batch_groups_one_adapter_within_size_and_bound(bound: int, max_size: int, arrive_every: int) -> None:
    rng = random.Random(bound * 31 + max_size)
    weights = [1 / (k + 1) ** 1.1 for k in range(20)]
    jobs = [Job(i, f"lora{rng.choices(range(20), weights)[0]}") for i in range(200)]
    batches = _batches(jobs, bound, max_size, arrive_every)
    order = [job for batch in batches for job in batch]
    assert sorted(j.n for j in order) == list(range(200))  # every job exactly once
    assert all(1 <= len(b) <= max_size and len({j.lora for j in b}) == 1 for b in batches)
    assert all([j.n for j in b] == sorted(j.n for j in b) for b in batches)  # arrival order inside a batch
    assert max(overtaken(order).values()) <= bound
    if bound == 0:
        assert order == jobs
    else:
        assert len(batches) < len(jobs)  # some jobs did share a run


def test_next_batch_counts_size_in_images_and_respects_same_key() -> None:
    scheduler: AdapterScheduler[Job] = AdapterScheduler(key=key, max_overtaken=10)
    jobs = [Job(0, "a"), Job(1, "a"), Job(2, "a"), Job(3, "a")]
    for job in jobs:
        scheduler.add(job)
    sizes = {0: 3, 1: 2, 2: 1, 3: 1}
    # Jobs 0 and 2 share a key of their own (say, the same step count): job 1 cannot join them.
    same = {0: "x", 1: "y", 2: "x", 3: "x"}
    batch = scheduler.next_batch(4, same=lambda j: same[j.n], size=lambda j: sizes[j.n])
    assert [j.n for j in batch] == [0, 2]  # 3 + 1 images; job 3 would make 5
    assert [j.n for j in scheduler.next_batch(4, same=lambda j: same[j.n], size=lambda j: sizes[j.n])] == [1]
    assert [j.n for j in scheduler.next_batch(4, same=lambda j: same[j.n], size=lambda j: sizes[j.n])] == [3]
    with pytest.raises(IndexError):
        scheduler.next_batch(4)
