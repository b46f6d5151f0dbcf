"""Creating, reading, listing and cancelling jobs through the API (no worker: jobs stay queued)."""

from __future__ import annotations

import json

import pytest

from loramill.domain.status import JobStatus
from loramill.jobs.contracts import parse_job
from tests.gateway.api.conftest import Api, png_bytes


def upload(api: Api, user: str = "alice", n: int = 2, headers: dict[str, str] | None = None, **form: str):
    files = [("images", (f"{i}.png", png_bytes(i), "image/png")) for i in range(n)]
    return api.client.post("/v1/trainings", files=files, data={"triggerWord": "sks", **form},
                           headers=api.auth(user) | (headers or {}))


def test_create_training_stores_images_and_queues_selfix_job(api: Api) -> None:
    response = upload(api, subjectType="face", maxSteps="20")

    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "training" and job["userId"] == "alice"
    keys = job["request"]["images"]
    assert len(keys) == 2 and all(k.startswith(f"users/alice/images/{job['id']}/") for k in keys)
    assert all(api.storage.exists(k) for k in keys)
    delivery = api.broker.receive(timeout=1)
    assert delivery is not None
    queued = parse_job(delivery.body)
    assert queued.task_id == job["id"] and queued.images == keys
    assert queued.configuration_params.trigger_word == "sks"
    assert queued.configuration_params.subject_type == "face" and queued.configuration_params.max_steps == 20


def test_create_generation_queues_job_with_location(api: Api) -> None:
    response = api.client.post("/v1/generations", json={"prompt": "a red fox", "seed": 5, "steps": 4},
                               headers=api.auth("alice"))

    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["request"] | {"prompt": "a red fox", "seed": 5} == job["request"]
    assert api.client.get(response.headers["Location"], headers=api.auth("alice")).json()["id"] == job["id"]


def test_put_job_twice_returns_same_job(api: Api) -> None:
    body = {"prompt": "a lighthouse at dusk", "seed": 7}

    first = api.client.put("/v1/jobs/my-job-1", json=body, headers=api.auth("alice"))
    second = api.client.put("/v1/jobs/my-job-1", json=body, headers=api.auth("alice"))

    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert api.client.get("/v1/jobs/my-job-1", headers=api.auth("alice")).json()["id"] == first.json()["id"]
    assert second.json()["createdAt"] == first.json()["createdAt"]
    assert api.store.count_queued() == 1
    assert api.broker.receive(timeout=1) is not None and api.broker.receive(timeout=0.2) is None


def test_put_job_with_different_body_conflicts(api: Api) -> None:
    api.client.put("/v1/jobs/my-job-2", json={"prompt": "one"}, headers=api.auth("alice"))

    response = api.client.put("/v1/jobs/my-job-2", json={"prompt": "two"}, headers=api.auth("alice"))

    assert response.status_code == 409
    assert response.json()["error"]["field"] == "taskId" and "'my-job-2'" in response.json()["error"]["message"]


def test_put_training_job_with_stored_image_keys(api: Api) -> None:
    api.storage.put_bytes("users/alice/images/set/1.png", png_bytes(1))

    response = api.client.put("/v1/jobs/train-1", headers=api.auth("alice"), json={
        "images": ["users/alice/images/set/1.png"], "configurationParams": {"maxSteps": 5, "triggerWord": "zq"}})

    assert response.status_code == 202
    assert response.json()["request"]["configurationParams"] == {"maxSteps": 5, "triggerWord": "zq"}


def test_post_generation_with_same_idempotency_key_returns_same_job(api: Api) -> None:
    headers = api.auth("alice") | {"Idempotency-Key": "req-42"}

    first = api.client.post("/v1/generations", json={"prompt": "a cat"}, headers=headers)
    second = api.client.post("/v1/generations", json={"prompt": "a cat"}, headers=headers)

    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    assert api.store.count_queued() == 1


def test_post_training_with_same_idempotency_key_returns_same_job(api: Api) -> None:
    first = upload(api, headers={"Idempotency-Key": "upload-1"})
    second = upload(api, headers={"Idempotency-Key": "upload-1"})

    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    assert api.store.count_queued() == 1


def test_list_jobs_pages_with_cursor_and_filters(api: Api) -> None:
    for i in range(5):
        api.client.post("/v1/generations", json={"prompt": f"p{i}"}, headers=api.auth("alice"))
    upload(api)

    page1 = api.client.get("/v1/jobs", params={"kind": "generation", "limit": 3}, headers=api.auth("alice")).json()
    page2 = api.client.get("/v1/jobs", params={"kind": "generation", "limit": 3, "cursor": page1["nextCursor"]},
                           headers=api.auth("alice")).json()
    trainings = api.client.get("/v1/jobs", params={"kind": "training"}, headers=api.auth("alice")).json()

    prompts = [j["request"]["prompt"] for j in page1["items"] + page2["items"]]
    assert prompts == ["p4", "p3", "p2", "p1", "p0"] and page2["nextCursor"] is None
    assert [j["kind"] for j in trainings["items"]] == ["training"]
    queued = api.client.get("/v1/jobs", params={"status": "queued"}, headers=api.auth("alice")).json()
    assert len(queued["items"]) == 6


def test_cancel_queued_job_withdraws_it_and_only_it(api: Api) -> None:
    keep = api.client.post("/v1/generations", json={"prompt": "keep"}, headers=api.auth("alice")).json()
    drop = api.client.post("/v1/generations", json={"prompt": "drop"}, headers=api.auth("alice")).json()

    response = api.client.post(f"/v1/jobs/{drop['id']}/cancel", headers=api.auth("alice"))

    assert response.status_code == 202 and response.json()["status"] == "canceled"
    assert api.store.get_job(keep["id"]).status is JobStatus.QUEUED
    assert not api.store.get_job(keep["id"]).cancel_requested
    again = api.client.post(f"/v1/jobs/{drop['id']}/cancel", headers=api.auth("alice"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_cancel_running_job_asks_worker_to_stop(api: Api) -> None:
    job = api.client.post("/v1/generations", json={"prompt": "long"}, headers=api.auth("alice")).json()
    api.store.transition(job["id"], JobStatus.PROCESSING)

    response = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth("alice"))

    assert response.status_code == 202
    assert response.json()["status"] == "processing" and response.json()["cancelRequested"] is True
    assert api.store.is_cancel_requested(job["id"])


def test_get_job_without_key_is_401(api: Api) -> None:
    response = api.client.get("/v1/jobs")
    bad = api.client.get("/v1/jobs", headers={"Authorization": "Bearer lm_nope_nope"})

    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"


def test_x_api_key_header_authenticates(api: Api) -> None:
    response = api.client.get("/v1/jobs", headers={"X-API-Key": api.keys["bob"]})

    assert response.status_code == 200 and response.json() == {"items": [], "nextCursor": None}


def test_get_file_streams_own_image(api: Api) -> None:
    job = upload(api, n=1).json()
    key = job["request"]["images"][0]

    response = api.client.get(f"/v1/files/{key}", headers=api.auth("alice"))

    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == png_bytes(0)


def test_health_ready_and_metrics_answer(api: Api) -> None:
    api.client.post("/v1/generations", json={"prompt": "x"}, headers=api.auth("alice"))

    assert api.client.get("/healthz").json()["status"] == "ok"
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok", "storage": "ok", "broker": "ok"}
    metrics = api.client.get("/metrics").text
    assert 'loramill_jobs_queued{kind="generate"} 1.0' in metrics
    assert 'route="/v1/generations"' in metrics


def test_unknown_route_answers_error_body(api: Api) -> None:
    response = api.client.get("/v1/nothing", headers=api.auth("alice"))

    assert response.status_code == 404 and json.loads(response.text)["error"]["code"] == "not_found"


def test_create_training_with_bad_option_stores_nothing(api: Api) -> None:
    response = upload(api, configurationParams='{"learningRate": 5}')

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "configurationParams.learningRate"
    assert api.storage.list("users/alice/") == [] and api.store.count_queued() == 0


def test_post_with_reused_idempotency_key_and_other_body_conflicts(api: Api) -> None:
    headers = api.auth("alice") | {"Idempotency-Key": "req-7"}
    api.client.post("/v1/generations", json={"prompt": "a cat"}, headers=headers)

    response = api.client.post("/v1/generations", json={"prompt": "a dog"}, headers=headers)
    bob = api.client.post("/v1/generations", json={"prompt": "a dog"},
                          headers=api.auth("bob") | {"Idempotency-Key": "req-7"})

    assert response.status_code == 409
    assert bob.status_code == 202  # keys are per user: bob's req-7 is his own


@pytest.mark.parametrize(("field", "value"), [("guidanceScale", False), ("steps", True), ("steps", "10"),
                                              ("seed", 1.5)])
def test_generation_numbers_are_strict_and_a_refused_one_queues_nothing(api: Api, field: str, value: object) -> None:
    """``false`` is not 0 and ``"10"`` is not 10, as in the job contracts (schemathesis found the first)."""
    response = api.client.post("/v1/generations", json={"prompt": "a kite", field: value}, headers=api.auth("alice"))

    assert response.status_code == 422
    assert field in response.text and api.store.count_queued() == 0
