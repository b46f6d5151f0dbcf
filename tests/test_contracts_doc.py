"""docs/contracts.md shows real messages: every JSON example on it is read by the code that implements it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loramill.domain.keys import validate_key
from loramill.jobs.contracts import GenerationJob, JobEvent, TrainingJob, parse_job
from loramill.jobs.tsuki import TsukiSettings, translate

DOC = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"
EXAMPLES = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)]
JOBS = [e for e in EXAMPLES if "taskId" in e and "status" not in e]
EVENTS = [e for e in EXAMPLES if "status" in e]
TSUKI = [e for e in EXAMPLES if "request_id" in e]


def test_doc_shows_both_jobs_and_every_kind_of_event() -> None:
    assert len(JOBS) + len(EVENTS) + len(TSUKI) == len(EXAMPLES) and len(TSUKI) == 1
    assert {type(parse_job(job)) for job in JOBS} == {TrainingJob, GenerationJob}
    assert {e["status"] for e in EVENTS} == {"queued", "processing", "completed", "failed"}


@pytest.mark.parametrize("job", JOBS, ids=lambda job: str(job.get("prompt", "training"))[:12])
def test_job_example_is_accepted_whole(job: dict) -> None:
    parsed = parse_job(job)

    assert parsed.ignored_fields == [] and parsed.to_payload() == job


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: event["status"])
def test_event_example_is_what_the_worker_publishes(event: dict) -> None:
    produced = JobEvent.model_validate(event).to_dict()

    assert produced == event and list(produced) == list(event)  # same keys, same order
    for key in [event.get("modelPath"), *event.get("imagePaths", [])]:
        if key is not None:
            assert validate_key(key) == key


def test_tsuki_example_becomes_the_generation_job_described() -> None:
    request = TSUKI[0]

    job = parse_job(translate(json.dumps(request).encode(), TsukiSettings(user_id="tsuki")))

    assert isinstance(job, GenerationJob) and (job.task_id, job.user_id) == (request["request_id"], "tsuki")
    params = request["params"]
    assert (job.prompt, job.negative_prompt, job.steps, job.guidance_scale, job.seed) == (
        params["prompt"], params["negative_prompt"], params["num_inference_steps"], params["guidance_scale"],
        params["seed"])
