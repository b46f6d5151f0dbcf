"""Helpers for the worker tests: Selfix and Prompt2Pic messages, training images in storage, event reading."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from loramill.adapters.storage.base import Storage
from tests.services.models import draw_subject

# A few steps at 64 px: seconds on a loaded 2-core machine, still every stage of a real run.
FAST_TRAINING = {"maxSteps": 4, "resolution": 64, "networkDim": 4, "learningRate": 8e-4, "checkpointEverySteps": 2}


def new_task_id() -> str:
    return str(uuid.uuid4())


def upload_images(storage: Storage, user_id: str, count: int = 4) -> list[str]:
    """``count`` distinct drawn subjects as JPEGs under ``users/{userId}/images/``; their keys."""
    keys = []
    for i in range(count):
        buffer = io.BytesIO()
        draw_subject(i, size=(96, 96)).save(buffer, "JPEG", quality=95)
        key = f"users/{user_id}/images/image{i + 1}.jpg"
        storage.put_bytes(key, buffer.getvalue(), "image/jpeg")
        keys.append(key)
    return keys


def selfix_job(task_id: str, user_id: str, images: list[str], **params: Any) -> dict[str, Any]:
    """A training job exactly as Selfix writes it (docs/contracts.md), with test-sized extensions in configurationParams."""
    config = {k: v for k, v in {**FAST_TRAINING, **params}.items() if v is not None}
    return {"taskId": task_id, "userId": user_id, "images": images, "configurationParams": config, "priority": 1}


def generation_job(task_id: str, user_id: str, **fields: Any) -> dict[str, Any]:
    """A Prompt2Pic / inference-worker generation request (docs/contracts.md), tiny."""
    return {"taskId": task_id, "userId": user_id, "prompt": "sks, a portrait, white background", "width": 64,
            "height": 64, "steps": 2, "guidanceScale": 5.0, "seed": 50, "numImages": 1, **fields}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


class EventLog:
    """Collects events from a reader function and waits for the ones a test needs."""

    def __init__(self, read: Callable[[float], list[bytes]]) -> None:
        self._read = read
        self.raw: list[bytes] = []

    def events(self, task_id: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(body) for body in self.raw]
        return [e for e in parsed if task_id is None or e.get("taskId") == task_id]

    def wait_for(self, task_id: str, status: str, timeout: float = 60.0, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` events of ``task_id`` with ``status`` arrived; they, in arrival order."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(task_id) if e["status"] == status]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = [(e.get("taskId"), e.get("status")) for e in self.events()]
                raise AssertionError(f"no {count}x {status} event for {task_id} within {timeout}s; saw {seen}")
            self.raw.extend(self._read(0.5))

    def drain(self, seconds: float) -> None:
        """Read whatever arrives in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.raw.extend(self._read(min(0.5, max(0.05, deadline - time.monotonic()))))


def raw_bytes_and_order(event_body: bytes) -> list[str]:
    """The top-level keys of a JSON event in the order they appear on the wire."""
    return list(json.loads(event_body, object_pairs_hook=lambda pairs: dict(pairs)).keys())
