"""Hostile job messages, files and LoRAs through a real worker: each gets a clear answer, the rest carry on.

The unit tests prove each guard on its own (tests/jobs/test_contracts.py, tests/engine/dataset,
tests/engine/lora); this module proves the guards are *wired in*: one worker on the embedded stack
(SQLite store, SQL queue, local storage, tiny SD 1.5) takes every hostile message of the issue
interleaved with ordinary jobs, answers each with a ``failed`` event naming the field or file and the
reason (or dead-letters what has no readable taskId), and completes the ordinary jobs in between.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.jobs.handlers.models import ResidentModels
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.engine.dataset.conftest import jpeg_bytes, photo, png_bomb, png_bytes
from tests.jobs.worker_helpers import generation_job, selfix_job, upload_images
from tests.reliability.helpers import record_figure

USER = "mallory"


@dataclass
class Case:
    """One hostile input: what is sent, and what must come back."""

    kind: str
    body: bytes
    expect: str  # "failed:<code>", "dead:<code>" or "completed"
    says: str = ""  # a fragment the error message must contain (the field or file and the reason)


def _msg(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _train(task: str, images: list[str], **params: Any) -> bytes:
    return json.dumps(selfix_job(task, USER, images, **params)).encode()


def _gen(task: str, **fields: Any) -> bytes:
    return json.dumps(generation_job(task, USER, **fields)).encode()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in entries.items():
            archive.writestr(zipfile.ZipInfo(name), body, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _forged_safetensors(header: dict[str, Any], data: bytes = b"\0" * 16) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def hostile_files(storage: LocalStorage) -> dict[str, str]:
    """Store every hostile upload under the user's prefix; ``{kind: key}``."""
    good = jpeg_bytes(photo("coffee"))
    polyglot_payload = _zip({"../../owned.txt": b"gotcha"})
    files = {
        "non-image bytes": ("notes.jpg", b"this is a text file, not a photo\n" * 50),
        "truncated JPEG": ("truncated.jpg", good[: len(good) // 2]),
        "PNG decompression bomb": ("bomb.png", png_bomb()),
        # 200 MB of zeros in ~200 KB, and 6,000 entries (over zip_max_entries 5,000)
        "zip bomb (size)": ("bomb.zip", _zip({"zeros.jpg": b"\0" * 200_000_000})),
        "zip bomb (entries)": ("many.zip", _zip({f"{i}.jpg": b"" for i in range(6000)})),
        "zip entry with ../": ("traversal.zip", _zip({"../../../../tmp/owned.jpg": good})),
        "image/zip polyglot": ("innocent.png", png_bytes(photo("chelsea")) + polyglot_payload),
    }
    keys = {}
    for kind, (name, body) in files.items():
        key = f"users/{USER}/images/hostile/{name}"
        storage.put_bytes(key, body)
        keys[kind] = key
    return keys


def hostile_loras(storage: LocalStorage, store: JobStore) -> dict[str, str]:
    """Register LoRA ids whose stored files are hostile; ``{kind: lora id}``."""
    loras = {
        "LoRA that is a pickle": ("evil.pt", pickle.dumps({"lora_unet_x.lora_down.weight": [0.0] * 8})),
        "safetensors offsets past the end": ("past-end.safetensors", _forged_safetensors(
            {"w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}})),
        "safetensors huge declared header": ("huge.safetensors", struct.pack("<Q", 1 << 50) + b"{}"),
        "safetensors huge declared tensor": ("huge-tensor.safetensors", _forged_safetensors(
            {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 16]}})),
    }
    ids = {}
    for i, (kind, (name, body)) in enumerate(loras.items()):
        key = f"users/{USER}/models/{name}"
        storage.put_bytes(key, body)
        lora_id = f"hostile-lora-{i}"
        store.create_lora(user_id=USER, family="sd15", storage_key=key, lora_id=lora_id)
        ids[kind] = lora_id
    # A real safetensors LoRA of FLUX's architecture, registered (as an upload could lie) as sd15.
    flux = io.BytesIO()
    flux_path = storage.root / "flux-tmp.safetensors"
    save_file({"lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(4, 32),
               "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_up.weight": torch.zeros(32, 4)},
              str(flux_path), metadata={"loramill.family": "flux"})
    flux.write(flux_path.read_bytes())
    flux_path.unlink()
    storage.put_bytes(f"users/{USER}/models/flux.safetensors", flux.getvalue())
    store.create_lora(user_id=USER, family="sd15", storage_key=f"users/{USER}/models/flux.safetensors",
                      lora_id="hostile-lora-flux")
    ids["LoRA of another architecture"] = "hostile-lora-flux"
    return ids


def hostile_cases(files: dict[str, str], loras: dict[str, str], good_images: list[str]) -> list[Case]:
    t = lambda: str(uuid.uuid4())  # noqa: E731
    cases = [
        # -- the message itself -----------------------------------------------------------------
        Case("malformed JSON", b'{"taskId": "x", "userId": ', "dead:invalid_json"),
        Case("malformed JSON", b"<html>not a job</html>", "dead:invalid_json"),
        Case("invalid UTF-8", b'{"taskId": "a\xff\xfe", "prompt": "x"}', "dead:invalid_json", "UTF-8"),
        Case("JSON that is not an object", b"[1, 2, 3]", "dead:invalid_json"),
        Case("wrong types", _msg(taskId=t(), userId=USER, images="users/mallory/images/a.jpg"),
             "failed:invalid_field", "images"),
        Case("wrong types", _train(t(), good_images, maxSteps="10"), "failed:invalid_field",
             "configurationParams.maxSteps"),
        Case("wrong types", _gen(t(), width=True), "failed:invalid_field", "width"),
        Case("missing fields", _msg(taskId=t(), userId=USER), "failed:unknown_job_kind", "images"),
        Case("missing fields", _msg(taskId=t(), prompt="a cat"), "failed:missing_field", "userId"),
        Case("missing fields", _msg(userId=USER, prompt="a cat"), "dead:missing_field"),
        Case("huge numbers", _train(t(), good_images, maxSteps=10**400), "failed:invalid_field", "401-digit"),
        Case("huge numbers", _gen(t(), seed=2**80), "failed:invalid_field", "seed"),
        Case("huge numbers", _gen(t(), guidanceScale=1e308), "failed:invalid_field", "guidanceScale"),
        Case("NaN and infinity", _gen(t()).replace(b'"guidanceScale": 5.0', b'"guidanceScale": NaN'),
             "failed:invalid_json", "NaN"),
        Case("NaN and infinity", _train(t(), good_images).replace(b'"learningRate": 0.0008',
                                                                  b'"learningRate": Infinity'),
             "failed:invalid_json", "NaN and Infinity"),
        Case("NaN and infinity", _gen(t()).replace(b'"guidanceScale": 5.0', b'"guidanceScale": 1e999'),
             "failed:invalid_field", "guidanceScale"),
        Case("negative or absurd steps and sizes", _train(t(), good_images, maxSteps=-5), "failed:invalid_field",
             "maxSteps"),
        Case("negative or absurd steps and sizes", _train(t(), good_images, maxSteps=10**9), "failed:invalid_field",
             "maxSteps"),
        Case("negative or absurd steps and sizes", _gen(t(), steps=0), "failed:invalid_field", "steps"),
        Case("negative or absurd steps and sizes", _gen(t(), width=100_000, height=100_000), "failed:invalid_field",
             "width"),
        Case("negative or absurd steps and sizes", _gen(t(), width=-512), "failed:invalid_field", "width"),
        Case("negative or absurd steps and sizes", _gen(t(), numImages=10_000), "failed:invalid_field", "numImages"),
        Case("negative or absurd steps and sizes", _train(t(), good_images, resolution=63), "failed:invalid_field",
             "resolution"),
        Case("zero images", _train(t(), []), "failed:invalid_field", "images"),
        Case("10,000 images", _train(t(), [f"users/{USER}/images/{i}.jpg" for i in range(10_000)]),
             "failed:invalid_field", "10000 images"),
        Case("1 MB prompt", _gen(t(), prompt="a" * 1_000_000), "failed:invalid_field", "prompt"),
        Case("control characters", _gen(t(), prompt="a cat\x1b[31m in red"), "failed:invalid_field", "U+001B"),
        Case("control characters", _msg(taskId=t(), userId="mal\x00lory", prompt="a cat"), "failed:invalid_field",
             "userId"),
        # a lone surrogate escape is not Unicode; the message is refused, its taskId still answered
        Case("control characters", _gen(t(), prompt="a cat \ud800"), "failed:invalid_json", "not valid JSON"),
        Case("control characters", _gen(t()).replace(b"portrait", b"portr\x01ait"), "failed:invalid_json",
             "not valid JSON"),
        # -- storage keys ---------------------------------------------------------------------------
        Case("storage key with ../", _train(t(), ["users/mallory/../alice/images/1.jpg"]), "failed:invalid_field",
             "images[0]"),
        Case("storage key with ../", _train(t(), ["../../etc/passwd"]), "failed:invalid_field", "images[0]"),
        Case("absolute path as key", _train(t(), ["/etc/passwd"]), "failed:invalid_field", "images[0]"),
        Case("URL-encoded traversal", _train(t(), ["users/mallory/%2e%2e/%2e%2e/etc/passwd"]),
             "failed:invalid_field", "images[0]"),
        Case("URL-encoded traversal", _train(t(), ["users/mallory/%252e%252e/x.jpg"]), "failed:invalid_field",
             "images[0]"),
        Case("URL as image (loopback)", _train(t(), ["http://127.0.0.1:8080/a.jpg"]), "failed:invalid_field",
             "images[0]"),
        Case("URL as image (metadata)", _train(t(), ["http://169.254.169.254/latest/meta-data/"]),
             "failed:invalid_field", "images[0]"),
        Case("URL as image (private)", _train(t(), ["http://10.0.0.5/a.jpg"]), "failed:invalid_field", "images[0]"),
        Case("missing image keys", _train(t(), [f"users/{USER}/images/none-{i}.jpg" for i in range(3)]),
             "failed:images_not_found", "none of the 3"),
    ]
    # -- files behind valid keys: the dataset step refuses each, naming the file and the reason ------------
    reasons = {"non-image bytes": "not_an_image", "truncated JPEG": "truncated",
               "PNG decompression bomb": "too_many_pixels", "zip bomb (size)": "too_large",
               "zip bomb (entries)": "zip_bomb", "zip entry with ../": "unsafe_path"}
    for kind, reason in reasons.items():
        cases.append(Case(kind, _train(t(), [files[kind]]), "failed:too_few_images", reason))
    cases.append(Case("image/zip polyglot", _train(t(), [files["image/zip polyglot"], *good_images[:2]]),
                      "completed"))
    # -- LoRAs ------------------------------------------------------------------------------------------
    lora_codes = {"LoRA that is a pickle": ("not_safetensors", "pickle"),
                  "safetensors offsets past the end": ("corrupt_lora", "past the end"),
                  "safetensors huge declared header": ("corrupt_lora", "forged or corrupt"),
                  "safetensors huge declared tensor": ("corrupt_lora", "declares"),
                  "LoRA of another architecture": ("lora_incompatible", "flux")}
    for kind, (code, says) in lora_codes.items():
        cases.append(Case(kind, _gen(t(), loras=[{"id": loras[kind]}]), f"failed:{code}", says))
    cases.append(Case("another user's LoRA id", _gen(t(), loras=[{"id": "alices-lora"}]), "failed:not_found",
                      "loras[0].id"))
    # A1111 prompt tags resolve only against a CLI --lora-dir; a job can't reach any LoRA through them
    cases.append(Case("another user's LoRA as a prompt tag", _gen(t(), prompt="<lora:alices-lora:1> a cat"),
                      "failed:invalid_input", "<lora:alices-lora>"))
    return cases


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path) -> Iterator[tuple[Worker, SqlBroker, Any]]:
    home = tmp_path_factory.mktemp("hostile")
    store = JobStore(f"sqlite:///{home / 'loramill.db'}")
    broker = SqlBroker(store, lease_seconds=60)
    storage = LocalStorage(home / "storage")
    settings = WorkerSettings(models=f"sd15={tiny_sd15}", base_model="sd15", work_dir=home / "work",
                              progress_interval=5, retry_base_seconds=0.01, handback_seconds=0, receive_timeout=0.2)
    worker = Worker(settings, broker, store, storage, models=ResidentModels())
    yield worker, broker, home
    broker.close()
    store.close()


def test_answer_every_hostile_input_and_keep_working(rig: tuple[Worker, SqlBroker, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    worker, broker, home = rig
    storage, store = worker.storage, worker.store
    assert isinstance(storage, LocalStorage)
    good_images = upload_images(storage, USER, count=3)
    store.create_lora(user_id="alice", family="sd15", storage_key="users/alice/models/x.safetensors",
                      lora_id="alices-lora")
    cases = hostile_cases(hostile_files(storage), hostile_loras(storage, store), good_images)

    # 1. Every hostile message goes on the queue, an ordinary job after every 13th
    ordinary: list[str] = []
    for i, case in enumerate(cases):
        broker.publish_job(case.body, task_id=f"q-{i}")
        if i % 13 == 12:
            task = str(uuid.uuid4())
            broker.publish_job(json.dumps(generation_job(task, "ordinary-user")).encode(), task_id=task)
            ordinary.append(task)

    # 2. One worker takes them all; handle() must return for every one (nothing escapes it)
    outcomes: Counter[str] = Counter()
    while (delivery := broker.receive(1)) is not None:
        outcomes[worker.handle(delivery)] += 1
    events = [json.loads(b) for b in broker.consume_events(1)]
    while more := broker.consume_events(0.2):
        events += [json.loads(b) for b in more]
    dead = broker.dead_letters(limit=1000)

    # 3. Each hostile input got its answer, naming what was wrong
    by_task: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_task.setdefault(event["taskId"], []).append(event)
    problems = []
    dead_bodies = {d.body: d.reason for d in dead}
    for case in cases:
        outcome, _, code = case.expect.partition(":")
        task = _task_id(case.body)
        if outcome == "dead":
            reason = dead_bodies.get(case.body)
            if reason is None or not reason.startswith(code) or case.says not in reason:
                problems.append(f"{case.kind}: expected dead letter {code!r} ({case.says!r}), got {reason!r}")
            continue
        final = [e for e in by_task.get(task or "", []) if e["status"] in ("failed", "completed")]
        if len(final) != 1 or final[0]["status"] != outcome:
            problems.append(f"{case.kind}: expected one {outcome} event, got {[e['status'] for e in final]}")
            continue
        if outcome == "failed":
            error = final[0]["error"]
            if error["code"] != code or case.says not in error["message"]:
                problems.append(f"{case.kind}: expected {code!r} saying {case.says!r}, got {error}")
    assert not problems, "\n".join(problems)

    # 4. The ordinary jobs in between all completed, and nothing leaked out of an archive
    done = {e["taskId"] for e in events if e["status"] == "completed"}
    assert set(ordinary) <= done
    assert not [p for p in Path("/tmp").glob("owned*")] and not list(home.rglob("owned*"))
    kinds = Counter(case.kind for case in cases)
    with capsys.disabled():
        record_figure("hostile_worker", {"inputs": len(cases), "per_kind": dict(kinds),
                                         "ordinary_completed": len(ordinary), "outcomes": dict(outcomes)})


def _task_id(body: bytes) -> str | None:
    try:
        data = json.loads(body, strict=False)
    except ValueError:
        return None
    return data.get("taskId") if isinstance(data, dict) else None


def test_failed_event_names_client_key_not_worker_path(rig: tuple[Worker, SqlBroker, Path]) -> None:
    # The client sent storage keys; the answer must name those, not the worker's scratch files
    # (which also tell a stranger the worker's directory layout).
    worker, broker, home = rig
    key = f"users/{USER}/images/path-leak/notes.jpg"
    worker.storage.put_bytes(key, b"not a picture at all\n" * 20)
    task = str(uuid.uuid4())
    broker.publish_job(_train(task, [key]), task_id=task)
    delivery = broker.receive(5)
    assert delivery is not None and worker.handle(delivery) == "failed"

    [failed] = [e for e in (json.loads(b) for b in broker.consume_events(1))
                if e["taskId"] == task and e["status"] == "failed"]
    message = failed["error"]["message"]
    assert key in message and "not_an_image" in message
    assert str(home) not in message and "/jobs/" not in message
