"""Tenancy: another user's jobs, LoRAs and files answer 404, exactly like ids that do not exist."""

from __future__ import annotations

import pytest

from loramill.domain.status import JobStatus
from tests.gateway.api.conftest import Api, png_bytes


@pytest.fixture
def alices(api: Api) -> dict[str, str]:
    """A job, a LoRA and a file of alice's."""
    job = api.client.post("/v1/trainings", files=[("images", ("a.png", png_bytes(), "image/png"))],
                          headers=api.auth("alice")).json()
    api.store.transition(job["id"], JobStatus.PROCESSING)
    key = f"users/alice/models/{job['id']}.safetensors"
    api.storage.put_bytes(key, b"weights")
    api.store.create_lora(user_id="alice", family="sd15", storage_key=key, task_id=job["id"], trigger_word="sks")
    return {"job": job["id"], "lora": job["id"], "file": key, "image": job["request"]["images"][0]}


def test_other_user_gets_404_on_everything_of_alices(api: Api, alices: dict[str, str]) -> None:
    bob = api.auth("bob")
    job, lora = alices["job"], alices["lora"]

    answers = {
        "get job": api.client.get(f"/v1/jobs/{job}", headers=bob),
        "job events": api.client.get(f"/v1/jobs/{job}/events", headers=bob),
        "cancel job": api.client.post(f"/v1/jobs/{job}/cancel", headers=bob),
        "get lora": api.client.get(f"/v1/loras/{lora}", headers=bob),
        "delete lora": api.client.delete(f"/v1/loras/{lora}", headers=bob),
        "lora file": api.client.get(f"/v1/files/{alices['file']}", headers=bob),
        "image file": api.client.get(f"/v1/files/{alices['image']}", headers=bob),
        "generate with lora": api.client.post("/v1/generations", headers=bob, json={
            "prompt": "sks", "loras": [{"id": lora, "weight": 0.8}]}),
        "train on her images": api.client.post("/v1/trainings", data={"imageKeys": alices["image"]}, headers=bob),
    }

    assert {name: r.status_code for name, r in answers.items()} == {name: 404 for name in answers}
    unknown = api.client.get("/v1/jobs/no-such-job", headers=bob).json()["error"]
    assert answers["get job"].json()["error"]["code"] == unknown["code"] == "not_found"
    assert api.client.get("/v1/jobs", headers=bob).json()["items"] == []
    assert api.client.get("/v1/loras", headers=bob).json()["items"] == []
    assert not api.store.is_cancel_requested(job) and api.store.get_lora(lora) is not None


def test_admin_sees_everyones_jobs_and_loras(api: Api, alices: dict[str, str]) -> None:
    root = api.auth("root")

    assert api.client.get(f"/v1/jobs/{alices['job']}", headers=root).status_code == 200
    assert [j["userId"] for j in api.client.get("/v1/jobs", headers=root).json()["items"]] == ["alice"]
    assert api.client.get(f"/v1/files/{alices['file']}", headers=root).content == b"weights"


def test_public_lora_is_usable_by_others_after_admin_shares_it(api: Api, alices: dict[str, str]) -> None:
    lora = alices["lora"]

    refused = api.client.post(f"/v1/loras/{lora}/public", headers=api.auth("alice"))
    shared = api.client.post(f"/v1/loras/{lora}/public", headers=api.auth("root"))
    listed = api.client.get("/v1/loras", headers=api.auth("bob")).json()["items"]
    used = api.client.post("/v1/generations", headers=api.auth("bob"),
                           json={"prompt": "sks person", "loras": [{"id": lora, "weight": 0.7}]})

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert shared.status_code == 200 and shared.json()["public"] is True
    assert [item["id"] for item in listed] == [lora]
    assert used.status_code == 202
    assert api.client.delete(f"/v1/loras/{lora}", headers=api.auth("bob")).status_code == 404


def test_delete_own_lora_removes_it_from_listing(api: Api, alices: dict[str, str]) -> None:
    response = api.client.delete(f"/v1/loras/{alices['lora']}", headers=api.auth("alice"))

    assert response.status_code == 204
    assert api.client.get("/v1/loras", headers=api.auth("alice")).json()["items"] == []
    refused = api.client.post("/v1/generations", headers=api.auth("alice"),
                              json={"prompt": "x", "loras": [{"id": alices["lora"]}]})
    assert refused.status_code == 404 and refused.json()["error"]["field"] == "loras[0].id"


def test_put_with_another_users_job_id_makes_own_job_without_touching_or_revealing_it(
        api: Api, alices: dict[str, str]) -> None:
    taken = api.client.put(f"/v1/jobs/{alices['job']}", json={"prompt": "mine now"}, headers=api.auth("bob"))
    fresh = api.client.put("/v1/jobs/never-used-id", json={"prompt": "mine now"}, headers=api.auth("bob"))

    # Ids are scoped per user: a taken id and a fresh one get the same answer (no existence oracle)
    assert taken.status_code == fresh.status_code == 202
    assert api.store.get_job(alices["job"]).user_id == "alice"  # type: ignore[union-attr]
    assert api.client.get(f"/v1/jobs/{alices['job']}", headers=api.auth("bob")).json()["id"] == taken.json()["id"]
    assert api.client.get(f"/v1/jobs/{alices['job']}", headers=api.auth("alice")).json()["kind"] == "training"
    assert taken.json()["kind"] == "generation" and taken.json()["id"] != alices["job"]
