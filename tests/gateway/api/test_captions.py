"""``POST /v1/trainings`` with kohya-style captions: ``star1.png`` + ``star1.txt`` in the ``captions`` field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loramill.domain.keys import caption_key
from loramill.engine.training import run
from loramill.gateway.api.uploads import MAX_CAPTION_CHARS
from tests.gateway.api.conftest import Api, png_bytes
from tests.gateway.api.test_events import read_events

FORM = {"triggerWord": "sks"}


def post(api: Api, captions: list[tuple[str, bytes]], names: tuple[str, ...] = ("star1.png", "star2.png"),
         headers: dict[str, str] | None = None) -> Any:
    files = [("images", (name, png_bytes(i), "image/png")) for i, name in enumerate(names)]
    files += [("captions", (name, data, "text/plain")) for name, data in captions]
    return api.client.post("/v1/trainings", files=files, data=FORM, headers=api.auth("alice") | (headers or {}))


def test_captions_are_stored_beside_their_images(api: Api) -> None:
    response = post(api, [("star2.txt", b"a sks star on a white background\n"),
                          ("star1.caption", "\ufeffune étoile sks".encode())])

    assert response.status_code == 202, response.text
    first, second = response.json()["request"]["images"]
    assert first.endswith(".png") and caption_key(first) == first[:-4] + ".txt"
    assert api.storage.get_bytes(caption_key(first)).decode() == "une étoile sks"  # BOM dropped
    assert api.storage.get_bytes(caption_key(second)).decode() == "a sks star on a white background"
    assert api.broker.receive(timeout=1) is not None  # queued with the same images field as ever


def test_images_without_captions_store_no_caption(api: Api) -> None:
    response = post(api, [("star1.txt", b"a sks star"), ("star2.txt", b"   \n")])

    assert response.status_code == 202, response.text
    first, second = response.json()["request"]["images"]
    assert api.storage.exists(caption_key(first))
    assert not api.storage.exists(caption_key(second))  # an empty caption is no caption


def test_a_repeated_request_keeps_the_accepted_jobs_captions(api: Api) -> None:
    first = post(api, [("star1.txt", b"a sks star")], headers={"Idempotency-Key": "set-1"})
    again = post(api, [("star1.txt", b"something else")], headers={"Idempotency-Key": "set-1"})

    assert (first.status_code, again.status_code) == (202, 200), again.text
    key = caption_key(first.json()["request"]["images"][0])
    assert api.storage.get_bytes(key) == b"a sks star"


@pytest.mark.parametrize(("captions", "code", "says"), [
    ([("moon.txt", b"a moon")], "caption_without_image", "captions[0] (moon.txt): no uploaded image is named moon"),
    ([("star1.txt", b"\xff\xfe a star")], "invalid_caption", "captions[0] (star1.txt) is not UTF-8"),
    ([("star1.txt", b"x" * (MAX_CAPTION_CHARS + 1))], "caption_too_long",
     f"captions[0] (star1.txt) is {MAX_CAPTION_CHARS + 1} characters"),
    ([("star1.txt", "é".encode() * 4 * MAX_CAPTION_CHARS)], "caption_too_long", "captions[0] (star1.txt) is over"),
    ([("star1.md", b"a star")], "invalid_caption", "captions[0] (star1.md): a caption file is named like its image"),
    ([("star1.txt", b"a"), ("star1.caption", b"b")], "invalid_caption", "captions[1] (star1.caption): a second"),
    ([("star1.txt", b"a"), ("star2.txt", b"b"), ("star3.txt", b"c")], "too_many_captions",
     "captions: 3 caption files sent for 2 uploaded images"),
])
def test_bad_caption_is_refused_by_name_and_nothing_stored(api: Api, captions: list, code: str, says: str) -> None:
    response = post(api, captions)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith(says), error
    assert error["field"].startswith("captions")
    assert api.storage.list("users/alice/") == []
    assert api.broker.receive(timeout=0.2) is None


def test_captions_count_against_the_part_limit_with_a_clear_answer(api: Api) -> None:
    # Starlette refuses a form over 1,000 files before the route runs; the answer names both fields.
    response = post(api, [(f"c{i}.txt", b"x") for i in range(1001)])

    assert response.status_code == 422, response.text
    assert "'captions' part per image" in response.json()["error"]["message"]


@pytest.mark.slow
def test_uploaded_captions_reach_the_trainer(api: Api, worker: object, monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[str] = []
    real_train = run.train

    def spying(config: Any, **kwargs: Any) -> Any:  # read as the run starts: the scratch is gone after the job
        trained.extend(sorted(p.read_text(encoding="utf-8").strip() for p in Path(config.images).rglob("*.txt")))
        return real_train(config, **kwargs)

    monkeypatch.setattr(run, "train", spying)
    files = [("images", (f"star{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    files += [("captions", ("star0.txt", b"a sks circle on a white background", "text/plain")),
              ("captions", ("star1.txt", b"a red square", "text/plain"))]
    job = api.client.post("/v1/trainings", files=files, headers=api.auth("alice"),
                          data={"triggerWord": "sks", "maxSteps": "2", "resolution": "64", "seed": "1"}).json()

    assert read_events(api, job["id"], api.auth("alice"))[-1][2]["status"] == "completed"
    assert sorted(trained) == ["a sks circle on a white background", "sks", "sks, a red square"]
