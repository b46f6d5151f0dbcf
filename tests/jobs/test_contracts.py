"""Job contracts: Selfix's messages verbatim, hostile input refused with errors naming field and fix."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loramill.errors import InvalidInput
from loramill.jobs.contracts import (
    ErrorInfo,
    GenerationJob,
    JobEvent,
    Metrics,
    Progress,
    TrainingJob,
    failed_event_for,
    parse_event,
    parse_job,
)

# Selfix's input and output messages, byte for byte as the seed document prints them.
SELFIX_INPUT = b"""{
  "taskId": "uuid-task-identifier",
  "userId": "user-identifier",
  "images": [
    "users/user-id/images/image1.jpg",
    "users/user-id/images/image2.jpg",
    "users/user-id/images/image3.jpg"
  ],
  "configurationParams": {
    "epochs": 10,
    "learningRate": 8e-4,
    "networkDim": 4
  },
  "priority": 1
}"""
SELFIX_OUTPUT = """{
  "taskId": "uuid-task-identifier",
  "userId": "user-identifier",
  "status": "completed",
  "modelPath": "users/user-id/models/avatar-model.safetensors",
  "metrics": {
    "trainingTime": 1200,
    "finalLoss": 0.0023
  }
}"""
GENERATION = {"taskId": "g-1", "userId": "u-1", "prompt": "tsuki_advtr, a samoyed dog smiling, white background",
              "negativePrompt": "", "width": 512, "height": 512, "steps": 50, "guidanceScale": 7.5, "seed": 50,
              "numImages": 1, "baseModel": "sd15", "loras": [{"id": "lora-1", "weight": 0.8}], "priority": 1}
TRAIN = {"taskId": "t-1", "userId": "u-1", "images": ["users/u-1/images/a.jpg"]}


def test_parse_job_accepts_selfix_training_message() -> None:
    job = parse_job(SELFIX_INPUT)

    assert isinstance(job, TrainingJob) and job.kind == "train"
    assert job.task_id == "uuid-task-identifier" and job.user_id == "user-identifier"
    assert job.images[2] == "users/user-id/images/image3.jpg"
    params = job.configuration_params
    assert (params.epochs, params.learning_rate, params.network_dim) == (10, 8e-4, 4)
    assert job.priority == 1 and job.ignored_fields == []


def test_parse_job_accepts_generation_message() -> None:
    job = parse_job(json.dumps(GENERATION).encode())

    assert isinstance(job, GenerationJob) and job.kind == "generate"
    assert (job.width, job.height, job.steps, job.guidance_scale, job.seed) == (512, 512, 50, 7.5, 50)
    assert job.loras[0].id == "lora-1" and job.loras[0].weight == 0.8
    assert job.to_payload() == GENERATION


def test_parse_job_accepts_every_training_extension() -> None:
    params = {"epochs": 100, "learningRate": 1e-4, "networkDim": 64, "networkAlpha": 64, "maxSteps": 1000,
              "batchSize": 2, "gradientAccumulation": 4, "resolution": 1024, "optimizer": "AdamW8bit",
              "lrScheduler": "cosine", "captioner": "florence2", "subjectType": "style",
              "checkpointEverySteps": 200, "seed": 42, "baseModel": "flux", "triggerWord": "tsuki_advtr",
              "validationPrompts": ["tsuki_advtr, a cat"]}

    job = parse_job(json.dumps(TRAIN | {"configurationParams": params}))

    assert isinstance(job, TrainingJob)
    assert job.configuration_params.optimizer == "adamw8bit"  # option names are case-insensitive
    assert job.to_payload()["configurationParams"] == params | {"optimizer": "adamw8bit"}


def test_serialize_event_matches_selfix_output_byte_for_byte() -> None:
    event = JobEvent(task_id="uuid-task-identifier", user_id="user-identifier", status="completed",
                     model_path="users/user-id/models/avatar-model.safetensors",
                     metrics=Metrics(training_time=1200, final_loss=0.0023))

    assert json.dumps(event.to_dict(), indent=2) == SELFIX_OUTPUT
    assert event.to_json() == json.dumps(json.loads(SELFIX_OUTPUT)).encode()


def test_parse_event_reads_selfix_output() -> None:
    event = parse_event(SELFIX_OUTPUT)

    assert event.status == "completed" and event.metrics is not None and event.metrics.final_loss == 0.0023
    assert json.dumps(event.to_dict(), indent=2) == SELFIX_OUTPUT


def test_serialize_generation_result_event_with_paths_and_urls() -> None:
    event = JobEvent(task_id="g-1", user_id="u-1", status="completed",
                     image_paths=["users/u-1/generations/g-1/0.png"], image_urls=["http://x/0.png"])

    assert list(event.to_dict()) == ["taskId", "userId", "status", "imagePaths", "imageUrls"]


def test_serialize_processing_event_with_progress() -> None:
    event = JobEvent(task_id="t", user_id="u", status="processing", progress=Progress(step=3, total_steps=10))

    assert event.to_dict() == {"taskId": "t", "userId": "u", "status": "processing",
                               "progress": {"step": 3, "totalSteps": 10}}


def test_serialize_event_drops_non_finite_loss() -> None:
    event = JobEvent(task_id="t", status="completed", metrics=Metrics(training_time=5, final_loss=math.nan))

    assert json.loads(event.to_json())["metrics"] == {"trainingTime": 5}


def test_parse_job_ignores_unknown_fields_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = TRAIN | {"callbackUrl": "http://x", "epochs": 3, "configurationParams": {"colour": "red"}}

    with caplog.at_level(logging.WARNING, logger="loramill.jobs"):
        job = parse_job(json.dumps(raw))

    assert job.ignored_fields == ["callbackUrl", "epochs", "configurationParams.colour"]
    assert "did you mean configurationParams.epochs" in caplog.text
    assert "callbackUrl" not in json.dumps(job.to_payload())


def test_parse_job_accepts_numeric_user_id() -> None:
    assert parse_job(json.dumps(TRAIN | {"userId": 123456789})).user_id == "123456789"


def _train(**params: Any) -> bytes:
    return json.dumps(TRAIN | {"configurationParams": params}).encode()


def _gen(**fields: Any) -> bytes:
    return json.dumps(GENERATION | fields).encode()


HOSTILE = [
    # (id, raw, code, field, words the message must contain)
    ("not json", b"{taskId: 1}", "invalid_json", "", "not valid JSON"),
    ("invalid utf-8", b'{"taskId": "\xff\xfe"}', "invalid_json", "", "UTF-8"),
    ("array", b"[1, 2]", "invalid_json", "", "JSON object"),
    ("neither kind", b'{"taskId": "a", "userId": "b"}', "unknown_job_kind", "images", "'prompt'"),
    ("both kinds", json.dumps(TRAIN | {"prompt": "x"}).encode(), "unknown_job_kind", "prompt", "one job"),
    ("missing taskId", json.dumps({"userId": "u", "prompt": "p"}).encode(), "missing_field", "taskId", "UUID"),
    ("wrong type", _train(epochs="10"), "invalid_field", "configurationParams.epochs", "whole number"),
    ("bool as int", _gen(steps=True), "invalid_field", "steps", "whole number"),
    ("float as int", _gen(numImages=1.5), "invalid_field", "numImages", "whole number"),
    ("huge number", _train(epochs=10**40), "invalid_field", "configurationParams.epochs", "at most 1000"),
    ("overflowing float", _train(learningRate=7).replace(b"7", b"1e400"), "invalid_field", "configurationParams.learningRate",
     "finite"),
    ("NaN token", b'{"taskId":"a","userId":"b","prompt":"x","guidanceScale":NaN}', "invalid_json", "", "NaN"),
    ("Infinity token", b'{"taskId":"a","userId":"b","prompt":"x","seed":Infinity}', "invalid_json", "",
     "Infinity"),
    ("negative steps", _gen(steps=-5), "invalid_field", "steps", "at least 1"),
    ("absurd steps", _gen(steps=100_000), "invalid_field", "steps", "at most 200"),
    ("absurd size", _gen(width=100_000), "invalid_field", "width", "at most 2048"),
    ("odd size", _gen(height=513), "invalid_field", "height", "try 512"),
    ("zero images", json.dumps(TRAIN | {"images": []}).encode(), "invalid_field", "images", "at least 1"),
    ("10,000 images", json.dumps(TRAIN | {"images": [f"users/u/images/{i}.jpg" for i in range(10_000)]}).encode(),
     "invalid_field", "images", "10000 images; at most 200"),
    ("1 MB prompt", _gen(prompt="a" * 1_000_000), "invalid_field", "prompt", "the limit is 2000"),
    ("blank prompt", _gen(prompt="   "), "invalid_field", "prompt", "empty"),
    ("NUL in prompt", _gen(prompt="a\x00b"), "invalid_field", "prompt", "U+0000"),
    ("escape in trigger", _train(triggerWord="ohwx\x1b[31m"), "invalid_field", "configurationParams.triggerWord",
     "U+001B"),
    ("lone surrogate", b'{"taskId":"a","userId":"b","prompt":"\\ud800"}', "invalid_json", "", "JSON"),
    ("lr zero", _train(learningRate=0), "invalid_field", "configurationParams.learningRate", "greater than 0"),
    ("lr one", _train(learningRate=1), "invalid_field", "configurationParams.learningRate", "less than 1"),
    ("dim too big", _train(networkDim=1024), "invalid_field", "configurationParams.networkDim", "at most 256"),
    ("bad subject", _train(subjectType="cat"), "invalid_field", "configurationParams.subjectType", "'face'"),
    ("traversal key", json.dumps(TRAIN | {"images": ["users/u/../../etc/passwd"]}).encode(), "invalid_field",
     "images[0]", "'..'"),
    ("absolute key", json.dumps(TRAIN | {"images": ["/etc/passwd"]}).encode(), "invalid_field", "images[0]",
     "relative"),
    ("encoded traversal", json.dumps(TRAIN | {"images": ["%2e%2e/%2e%2e/etc/passwd"]}).encode(), "invalid_field",
     "images[0]", "'..'"),
    ("backslash key", json.dumps(TRAIN | {"images": ["..\\..\\win.ini"]}).encode(), "invalid_field", "images[0]",
     "'/' separators"),
    ("taskId with slash", json.dumps(TRAIN | {"taskId": "../x"}).encode(), "invalid_field", "taskId", "UUID"),
    ("too many loras", _gen(loras=[{"id": f"l{i}"} for i in range(20)]), "invalid_field", "loras", "at most 8"),
    ("lora weight", _gen(loras=[{"id": "l", "weight": 40}]), "invalid_field", "loras[0].weight", "at most 4"),
    ("priority", _gen(priority=1000), "invalid_field", "priority", "at most 10"),
    ("oversized message", b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}', "job_too_large", "", "limit"),
]


@pytest.mark.parametrize(("raw", "code", "field", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_parse_job_refuses_hostile_input(raw: bytes, code: str, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_job(raw)

    assert (caught.value.code, caught.value.field) == (code, field)
    assert words in caught.value.message
    assert len(caught.value.message) < 600  # the offending value is never echoed back in full


def test_make_failed_event_for_invalid_job_names_field_and_fix() -> None:
    raw = _gen(steps=0)
    with pytest.raises(InvalidInput) as caught:
        parse_job(raw)

    event = failed_event_for(raw, caught.value)

    assert event is not None
    assert event.to_dict() == {"taskId": "g-1", "userId": "u-1", "status": "failed",
                               "error": {"code": "invalid_field", "message": "steps: must be at least 1, not 0"}}


def test_make_failed_event_without_readable_task_id_returns_none() -> None:
    assert failed_event_for(b"\xff", InvalidInput("x")) is None
    assert failed_event_for(b'{"taskId": "../etc"}', InvalidInput("x")) is None


def test_build_error_info_from_exception() -> None:
    assert ErrorInfo.from_exception(InvalidInput("m", code="c")).model_dump() == {"code": "c", "message": "m"}


# ---- property-based fuzzing ----------------------------------------------------------------------

FUZZ_CASES = 2000
_counts: dict[str, int] = {}
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=30))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=5)
_config = st.dictionaries(st.sampled_from(["epochs", "learningRate", "networkDim", "resolution", "subjectType",
                                           "triggerWord", "validationPrompts", "optimizer"]), _json, max_size=4)
_jobs = st.fixed_dictionaries(
    {"taskId": st.sampled_from(["t-1", "../t", ""]) | st.text(max_size=8) | st.integers(),
     "userId": st.just("u-1") | st.text(max_size=8)},
    optional={"images": st.lists(st.sampled_from(["users/u/images/a.jpg", "../a", "/abs", "a%2e%2e/b", "a\\b"])
                                 | st.text(max_size=20), max_size=3),
              "prompt": st.just("a cat") | st.text(max_size=20),
              "configurationParams": _config | _json, "width": _json, "steps": _json, "priority": _json,
              "loras": st.lists(st.dictionaries(st.sampled_from(["id", "weight"]), _scalars), max_size=2),
              "seed": _scalars, "numImages": _scalars, "guidanceScale": _scalars, "negativePrompt": _scalars})
_jobs = st.tuples(st.dictionaries(st.text(max_size=6), _scalars, max_size=2), _jobs).map(lambda p: p[0] | p[1])


def _parse_or_invalid(raw: bytes) -> None:
    try:
        job = parse_job(raw)
    except InvalidInput as exc:
        assert exc.message and exc.code
        return
    _counts["accepted"] = _counts.get("accepted", 0) + 1
    assert isinstance(job, TrainingJob | GenerationJob)
    json.dumps(job.to_payload(), allow_nan=False)  # whatever parses serialises back to strict JSON


@settings(max_examples=FUZZ_CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300))
def test_fuzz_parse_job_any_bytes(raw: bytes) -> None:
    _counts["bytes"] = _counts.get("bytes", 0) + 1
    _parse_or_invalid(raw)


@settings(max_examples=FUZZ_CASES // 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(_jobs)
def test_fuzz_parse_job_job_shaped_json(data: dict[str, Any]) -> None:
    _counts["json"] = _counts.get("json", 0) + 1
    _parse_or_invalid(json.dumps(data).encode())


def test_record_fuzz_case_count(record_property: Any) -> None:
    """Write how many fuzz cases ran (kept in tests/artifacts/ and the junit properties)."""
    total = _counts.get("bytes", 0) + _counts.get("json", 0)
    record_property("parse_job_fuzz_cases", total)
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    (artifacts / "parse_job_fuzz.json").write_text(json.dumps(_counts | {"total": total}))
    print(f"parse_job fuzz cases: {_counts}")
    if "bytes" in _counts and "json" in _counts:  # both fuzz tests ran in this session
        assert total >= FUZZ_CASES
