"""Jobs in the store: idempotent create, the status machine enforced, events, listing by cursor."""

from __future__ import annotations

import threading

import pytest

from loramill.adapters.store import JobStore
from loramill.errors import Conflict, InvalidInput, NotFound

PAYLOAD = {"taskId": "t-1", "userId": "u-1", "images": ["users/u-1/images/a.jpg"],
           "configurationParams": {"networkDim": 4, "epochs": 10, "learningRate": 8e-4}, "priority": 1}


def _create(store: JobStore, task_id: str = "t-1", user_id: str = "u-1", kind: str = "train", **kw: object):
    return store.create_job(task_id, user_id, kind, PAYLOAD | {"taskId": task_id}, **kw)  # type: ignore[arg-type]


def test_create_job_stores_payload_as_received(store: JobStore) -> None:
    record, created = _create(store, priority=1)

    assert created and record.status == "queued" and record.attempts == 0 and record.priority == 1
    assert record.payload == PAYLOAD and list(record.payload["configurationParams"]) == ["networkDim", "epochs",
                                                                                         "learningRate"]
    assert record.created_at.tzinfo is not None and record.started_at is None


def test_create_job_again_with_same_payload_returns_existing(store: JobStore) -> None:
    first, _ = _create(store)

    again, created = _create(store)

    assert not created and again == first


def test_create_job_with_same_id_different_payload_raises_conflict(store: JobStore) -> None:
    _create(store)

    with pytest.raises(Conflict, match="taskId 't-1' is already used"):
        store.create_job("t-1", "u-1", "train", PAYLOAD | {"priority": 5})
    with pytest.raises(Conflict):
        store.create_job("t-1", "someone-else", "train", PAYLOAD)


def test_create_job_reusing_idempotency_key(store: JobStore) -> None:
    first, _ = _create(store, "t-1", idempotency_key="k")

    same, created = store.create_job("t-2", "u-1", "train", PAYLOAD | {"taskId": "t-1"}, idempotency_key="k")
    other_user, other_created = _create(store, "t-3", user_id="u-2", idempotency_key="k")

    assert not created and same.id == "t-1"
    assert other_created and other_user.id == "t-3"
    with pytest.raises(Conflict, match="idempotency key 'k'"):
        store.create_job("t-4", "u-1", "train", {"different": True}, idempotency_key="k")


def test_transition_through_status_machine(store: JobStore) -> None:
    _create(store)

    assert store.transition("t-1", "processing")
    assert store.transition("t-1", "completed", result={"modelPath": "users/u-1/models/t-1.safetensors"})

    job = store.get_job("t-1")
    assert job is not None and job.status == "completed" and job.attempts == 1
    assert job.result == {"modelPath": "users/u-1/models/t-1.safetensors"}
    assert job.started_at is not None and job.finished_at is not None and job.finished_at >= job.started_at


def test_transition_never_overwrites_terminal_state(store: JobStore) -> None:
    _create(store)
    store.transition("t-1", "processing")
    store.transition("t-1", "canceled")

    assert not store.transition("t-1", "completed", result={"x": 1})
    assert not store.transition("t-1", "processing")

    job = store.get_job("t-1")
    assert job is not None and job.status == "canceled" and job.result is None and job.attempts == 1


def test_transition_skipping_processing_raises_conflict(store: JobStore) -> None:
    _create(store)

    with pytest.raises(Conflict, match="queued; it cannot become completed"):
        store.transition("t-1", "completed")


def test_transition_unknown_job_raises_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.transition("nope", "processing")


def test_redelivered_job_counts_attempts_and_keeps_first_start(store: JobStore) -> None:
    _create(store)
    store.transition("t-1", "processing")
    first = store.get_job("t-1")

    store.transition("t-1", "processing")  # another worker took it after a lease expired
    store.transition("t-1", "queued", error={"code": "transient", "message": "S3 down"})
    store.transition("t-1", "processing")

    job = store.get_job("t-1")
    assert job is not None and first is not None
    assert job.attempts == 3 and job.started_at == first.started_at and job.error is not None


def test_transition_appends_event_only_when_it_moves(store: JobStore) -> None:
    _create(store)
    done = {"taskId": "t-1", "userId": "u-1", "status": "completed", "modelPath": "m"}

    store.transition("t-1", "processing", event={"taskId": "t-1", "status": "processing"})
    store.transition("t-1", "completed", event=done)
    store.transition("t-1", "failed", event={"taskId": "t-1", "status": "failed"})

    bodies = [e.body for e in store.list_events("t-1")]
    assert bodies == [{"taskId": "t-1", "status": "processing"}, done]
    assert list(bodies[1]) == ["taskId", "userId", "status", "modelPath"]


def test_set_progress_only_while_processing(store: JobStore) -> None:
    _create(store)

    assert not store.set_progress("t-1", {"step": 1, "totalSteps": 10})
    store.transition("t-1", "processing")
    assert store.set_progress("t-1", {"step": 3, "totalSteps": 10})

    job = store.get_job("t-1")
    assert job is not None and job.progress == {"step": 3, "totalSteps": 10}


def test_request_cancel_of_queued_job_cancels_at_once(store: JobStore) -> None:
    _create(store)

    job = store.request_cancel("t-1", event={"taskId": "t-1", "status": "canceled"})

    assert job.status == "canceled" and job.cancel_requested and job.finished_at is not None
    assert [e.body["status"] for e in store.list_events("t-1")] == ["canceled"]
    assert not store.transition("t-1", "processing")


def test_request_cancel_of_processing_job_sets_flag(store: JobStore) -> None:
    _create(store)
    store.transition("t-1", "processing")

    job = store.request_cancel("t-1")

    assert job.status == "processing" and store.is_cancel_requested("t-1")


def test_request_cancel_of_finished_job_changes_nothing(store: JobStore) -> None:
    _create(store)
    store.transition("t-1", "processing")
    store.transition("t-1", "completed")

    job = store.request_cancel("t-1")

    assert job.status == "completed" and not job.cancel_requested
    with pytest.raises(NotFound):
        store.request_cancel("nope")


def test_race_complete_against_cancel_one_terminal_state_wins(store: JobStore) -> None:
    outcomes: dict[str, bool] = {}
    for i in range(5):
        _create(store, f"r-{i}")
        store.transition(f"r-{i}", "processing")
        barrier = threading.Barrier(2)

        def move(status: str, task: str = f"r-{i}", barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            outcomes[status] = store.transition(task, status)

        threads = [threading.Thread(target=move, args=(s,)) for s in ("completed", "canceled")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        job = store.get_job(f"r-{i}")
        assert sorted(outcomes.values()) == [False, True]
        assert job is not None and outcomes[job.status.value] is True


def test_list_jobs_pages_with_cursor_newest_first(store: JobStore) -> None:
    for i in range(7):
        _create(store, f"t-{i}", kind="train" if i % 2 else "generate")

    pages, cursor = [], None
    while True:
        page = store.list_jobs("u-1", cursor=cursor, limit=3)
        pages.append([j.id for j in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break

    assert pages == [["t-6", "t-5", "t-4"], ["t-3", "t-2", "t-1"], ["t-0"]]
    assert [j.id for j in store.list_jobs("u-1", kind="train").items] == ["t-5", "t-3", "t-1"]
    assert store.list_jobs("u-2").items == [] and len(store.list_jobs(None).items) == 7
    assert store.list_jobs(None, status="processing").items == []


def test_list_jobs_refuses_forged_cursor(store: JobStore) -> None:
    with pytest.raises(InvalidInput, match="cursor"):
        store.list_jobs("u-1", cursor="not-a-cursor")


def test_list_events_after_id(store: JobStore) -> None:
    _create(store)
    ids = [store.append_event("t-1", {"n": n}) for n in range(4)]
    store.append_event("t-1", b'{"taskId": "t-1", "status": "queued"}')

    after = store.list_events("t-1", after_id=ids[1])

    assert [e.body for e in after] == [{"n": 2}, {"n": 3}, {"taskId": "t-1", "status": "queued"}]
    assert ids == sorted(ids) and store.list_events("other") == []


def test_count_queued_by_kind(store: JobStore) -> None:
    _create(store, "a", kind="train")
    _create(store, "b", kind="generate")
    _create(store, "c", kind="generate")
    store.transition("c", "processing")

    assert (store.count_queued(), store.count_queued("generate"), store.count_queued("train")) == (2, 1, 1)


def test_create_job_stores_its_event_in_the_same_transaction_only_when_created(store: JobStore) -> None:
    queued = {"taskId": "t-1", "userId": "u-1", "status": "queued"}
    _create(store, event=queued)
    _create(store, event=queued)  # a repeat: the job exists, no second queued event

    assert [e.body for e in store.list_events("t-1")] == [queued]


def test_claim_job_creates_and_starts_in_one_step_keeping_the_status_machine(store: JobStore) -> None:
    processing = {"taskId": "t-1", "userId": "u-1", "status": "processing"}

    record, started = store.claim_job("t-1", "u-1", "train", PAYLOAD, stale_after=60, event=processing)
    assert started == "started" and record.status == "queued" and record.attempts == 0  # as it was before
    again, busy = store.claim_job("t-1", "u-1", "train", PAYLOAD, stale_after=60, event=processing)
    assert busy == "busy" and again.status == "processing"  # a copy of a job a live worker runs

    stored = store.get_job("t-1")
    assert stored is not None and stored.status == "processing" and stored.attempts == 1
    assert [e.body for e in store.list_events("t-1")] == [processing]

    store.transition("t-1", "completed", result={"taskId": "t-1", "status": "completed"})
    done, finished = store.claim_job("t-1", "u-1", "train", PAYLOAD, stale_after=60, event=processing)
    assert finished == "finished" and done.status == "completed"
    assert len(store.list_events("t-1")) == 1  # nothing appended for a finished job


def test_claim_job_takes_over_a_silent_worker_and_accepts_another_normal_form(store: JobStore) -> None:
    _create(store)  # as the gateway stored it
    store.claim_job("t-1", "u-1", "train", PAYLOAD, stale_after=60)

    # Another normal form of the same request, and the first worker silent for longer than stale_after=0
    record, started = store.claim_job("t-1", "u-1", "train", PAYLOAD | {"priority": 3}, stale_after=0)

    assert started == "started" and record.attempts == 1
    assert store.get_job("t-1").attempts == 2  # type: ignore[union-attr]


def test_claim_job_refuses_another_users_or_kinds_job(store: JobStore) -> None:
    _create(store)

    for user_id, kind in (("someone-else", "train"), ("u-1", "generate")):
        with pytest.raises(Conflict, match="already used by a different job"):
            store.claim_job("t-1", user_id, kind, PAYLOAD, stale_after=60)
    assert store.get_job("t-1").status == "queued"  # type: ignore[union-attr]
