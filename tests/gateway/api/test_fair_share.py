"""One user's flood must not lock the others out: per-key rate limit and per-user waiting-jobs quota."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.api.conftest import Api, make_api, png_bytes


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Api]:
    made = make_api(tmp_path, queue_limit=20, user_queue_limit=5, user_rate_limit=1000, user_rate_burst=1000)
    with made.client:
        yield made
    made.broker.close()
    made.store.close()


def test_flood_from_one_user_leaves_others_able_to_submit(shared: Api) -> None:
    answers = [shared.client.post("/v1/generations", json={"prompt": f"flood {i}"}, headers=shared.auth("alice"))
               for i in range(30)]

    assert [a.status_code for a in answers].count(202) == 5  # her share, not the whole queue
    refused = answers[-1].json()["error"]
    assert answers[-1].status_code == 429 and refused["code"] == "user_queue_full"
    assert "LORAMILL_USER_QUEUE_LIMIT" in refused["message"] and answers[-1].headers["Retry-After"]
    bob = shared.client.post("/v1/generations", json={"prompt": "mine"}, headers=shared.auth("bob"))
    assert bob.status_code == 202
    assert shared.store.count_queued(user_id="alice") == 5 and shared.store.count_queued() == 6


def test_refuse_submissions_above_rate_with_retry_after(tmp_path: Path) -> None:
    api = make_api(tmp_path, user_rate_limit=0.5, user_rate_burst=3)
    with api.client:
        answers = [api.client.post("/v1/generations", json={"prompt": f"p {i}"}, headers=api.auth("alice"))
                   for i in range(4)]
        bob = api.client.post("/v1/generations", json={"prompt": "mine"}, headers=api.auth("bob"))
    api.broker.close()
    api.store.close()

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    assert "LORAMILL_USER_RATE_LIMIT" in answers[-1].json()["error"]["message"]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 2
    assert bob.status_code == 202


def test_refuse_upload_past_the_users_storage_quota(tmp_path: Path) -> None:
    image = png_bytes(1)
    api = make_api(tmp_path, user_storage_bytes=len(image) * 5 // 2)  # room for two of these images
    with api.client:
        first = api.client.post("/v1/trainings", headers=api.auth("alice"),
                                files=[("images", ("a.png", image)), ("images", ("b.png", png_bytes(2)))])
        over = api.client.post("/v1/trainings", headers=api.auth("alice"), files=[("images", ("c.png", png_bytes(3)))])
        bob = api.client.post("/v1/trainings", headers=api.auth("bob"), files=[("images", ("d.png", image))])
    api.broker.close()
    api.store.close()

    assert first.status_code == 202 and bob.status_code == 202  # bob's share is his own
    assert over.status_code == 413
    error = over.json()["error"]
    assert error["code"] == "storage_quota_exceeded" and "LORAMILL_USER_STORAGE_BYTES" in error["message"]


def test_measure_storage_once_for_many_uploads_and_free_it_on_lora_delete(tmp_path: Path) -> None:
    api = make_api(tmp_path, user_storage_bytes=10**9)
    with api.client:
        for i in range(4):
            answer = api.client.post("/v1/trainings", headers=api.auth("alice"),
                                     files=[("images", (f"{i}.png", png_bytes(i)))])
            assert answer.status_code == 202
        gateway = api.client.app.state.gateway  # type: ignore[attr-defined]
        assert gateway.quota.measures == 1  # the prefix was listed once, not per upload

        api.storage.put_bytes("users/alice/models/t.safetensors", b"w" * 5000, "application/octet-stream")
        lora = api.store.create_lora(user_id="alice", family="sd15", storage_key="users/alice/models/t.safetensors",
                                     task_id="t")
        assert api.client.delete(f"/v1/loras/{lora.id}", headers=api.auth("alice")).status_code == 204
    api.broker.close()
    api.store.close()

    assert not api.storage.exists("users/alice/models/t.safetensors")  # its bytes no longer count
