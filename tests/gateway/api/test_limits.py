"""Limits and backpressure: each refusal is a 4xx whose message names the limit and its setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.api.conftest import Api, make_api, png_bytes


@pytest.fixture
def tight(tmp_path: Path):
    made = make_api(tmp_path, max_body_bytes=200_000, max_images=3, max_image_pixels=200 * 200,
                    max_prompt_chars=50, queue_limit=2, retry_after_seconds=7)
    with made.client:
        yield made
    made.broker.close()
    made.store.close()


def _images(n: int, size: tuple[int, int] = (96, 80)) -> list:
    return [("images", (f"{i}.png", png_bytes(i, size), "image/png")) for i in range(n)]


def test_create_training_over_body_limit_is_413(tight: Api) -> None:
    big = [("images", ("noise.bin", b"\x00" * 300_000, "image/png"))]

    response = tight.client.post("/v1/trainings", files=big, headers=tight.auth("alice"))

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert "LORAMILL_MAX_BODY_BYTES" in response.json()["error"]["message"]


def test_create_training_with_too_many_images_names_limit(tight: Api) -> None:
    response = tight.client.post("/v1/trainings", files=_images(4), headers=tight.auth("alice"))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_images"
    assert "LORAMILL_MAX_IMAGES" in response.json()["error"]["message"]


def test_create_training_with_huge_image_names_pixel_limit(tight: Api) -> None:
    response = tight.client.post("/v1/trainings", files=_images(1, (300, 200)), headers=tight.auth("alice"))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "image_too_many_pixels" and "LORAMILL_MAX_IMAGE_PIXELS" in error["message"]
    assert error["field"] == "images[0]"


def test_create_training_with_non_image_is_422(tight: Api) -> None:
    files = [("images", ("notes.png", b"this is not a picture", "image/png"))]

    response = tight.client.post("/v1/trainings", files=files, headers=tight.auth("alice"))

    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_image"
    assert "notes.png" in response.json()["error"]["message"]


def test_create_generation_with_long_prompt_names_limit(tight: Api) -> None:
    response = tight.client.post("/v1/generations", json={"prompt": "x" * 51}, headers=tight.auth("alice"))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "prompt_too_long" and "LORAMILL_MAX_PROMPT_CHARS" in error["message"]
    assert error["field"] == "prompt"


def test_create_job_over_queue_limit_is_429_with_retry_after(tight: Api) -> None:
    for i in range(2):
        assert tight.client.post("/v1/generations", json={"prompt": f"p{i}"},
                                 headers=tight.auth("alice")).status_code == 202

    response = tight.client.post("/v1/generations", json={"prompt": "one too many"}, headers=tight.auth("bob"))

    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert "LORAMILL_QUEUE_LIMIT" in response.json()["error"]["message"]
    assert tight.store.count_queued() == 2


def test_repeated_put_is_answered_even_when_queue_is_full(tight: Api) -> None:
    first = tight.client.put("/v1/jobs/mine", json={"prompt": "a"}, headers=tight.auth("alice"))
    tight.client.post("/v1/generations", json={"prompt": "b"}, headers=tight.auth("alice"))

    again = tight.client.put("/v1/jobs/mine", json={"prompt": "a"}, headers=tight.auth("alice"))

    assert first.status_code == 202 and again.status_code == 200


def test_create_generation_with_bad_field_names_it(tight: Api) -> None:
    response = tight.client.post("/v1/generations", json={"prompt": "x", "width": 100},
                                 headers=tight.auth("alice"))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "width" and "multiple of 8" in response.json()["error"]["message"]
