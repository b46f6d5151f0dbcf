"""The API with the real worker and a tiny SD 1.5: train, follow, generate with the LoRA, download, cancel."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.gateway.api.conftest import Api, png_bytes
from tests.gateway.api.test_events import read_events

pytestmark = pytest.mark.slow
TRAIN = {"triggerWord": "sks", "maxSteps": "6", "resolution": "64", "seed": "1"}


def start_training(api: Api, **form: str) -> dict:
    files = [("images", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    response = api.client.post("/v1/trainings", files=files, data=TRAIN | form, headers=api.auth("alice"))
    assert response.status_code == 202, response.text
    return response.json()


def test_train_then_generate_with_lora_through_api(api: Api, worker: object) -> None:
    job = start_training(api)

    events = read_events(api, job["id"], api.auth("alice"))

    assert events[-1][2]["status"] == "completed", events[-1]
    assert any(kind == "progress" for _, kind, _ in events)
    trained = api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth("alice")).json()
    lora_id = trained["result"]["loraId"]
    loras = api.client.get("/v1/loras", headers=api.auth("alice")).json()["items"]
    assert [lora["id"] for lora in loras] == [lora_id]

    generation = api.client.post("/v1/generations", headers=api.auth("alice"), json={
        "prompt": "a photo of sks", "width": 64, "height": 64, "steps": 3, "seed": 3,
        "loras": [{"id": lora_id, "weight": 0.9}]}).json()
    assert read_events(api, generation["id"], api.auth("alice"))[-1][2]["status"] == "completed"
    done = api.client.get(f"/v1/jobs/{generation['id']}", headers=api.auth("alice")).json()
    picture = api.client.get(done["result"]["files"][0]["url"], headers=api.auth("alice"))
    assert picture.status_code == 200
    assert Image.open(io.BytesIO(picture.content)).size == (64, 64)


def test_cancel_running_training_stops_it_and_keeps_checkpoint(api: Api, worker: object) -> None:
    job = start_training(api, maxSteps="5000", checkpointEverySteps="5")  # far longer than the test waits

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth("alice")).json()
        if current["progress"] and current["progress"]["stage"] == "train" and current["progress"]["step"] >= 6:
            break
        time.sleep(0.1)
    response = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth("alice"))
    events = read_events(api, job["id"], api.auth("alice"))

    assert response.status_code == 202 and response.json()["cancelRequested"] is True
    assert events[-1][2]["status"] == "canceled"
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth("alice")).json()["status"] == "canceled"
    assert api.storage.list(f"checkpoints/{job['id']}/")


def test_training_that_evaluates_itself_reports_quality_and_grids(api: Api, worker: Any, tmp_path: Path) -> None:
    from tests.engine.evaluation.conftest import write_tiny_clip

    worker.settings.clip_model = str(write_tiny_clip(tmp_path / "clip"))  # LORAMILL_CLIP_MODEL
    job = start_training(api, evalEverySteps="3", selectBy="clip", stopAt="clip>=2")  # a target never reached

    events = read_events(api, job["id"], api.auth("alice"))

    done = events[-1][2]
    assert done["status"] == "completed", done
    assert 0 < done["metrics"]["consistency"] <= 1 and 0 < done["metrics"]["preservation"] <= 1
    assert set(done["metrics"]) == {"trainingTime", "finalLoss", "consistency", "preservation"}  # Selfix's + 2
    lora_id = api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth("alice")).json()["result"]["loraId"]
    lora = api.client.get(f"/v1/loras/{lora_id}", headers=api.auth("alice")).json()
    assert [e["step"] for e in lora["metrics"]["evaluations"]] == [3, 6]
    assert lora["metrics"]["bestStep"] in (3, 6) and lora["metrics"]["selectBy"] == "clip"
    samples = lora["metrics"]["samples"]
    assert [key.rsplit("/", 1)[1] for key in samples] == ["base.png", "step-000003.png", "step-000006.png"]
    grid = api.client.get(f"/v1/files/{samples[-1]}", headers=api.auth("alice"))
    assert grid.status_code == 200 and Image.open(io.BytesIO(grid.content)).format == "PNG"
