"""Server-sent events: status and progress to completion, and resuming with Last-Event-ID."""

from __future__ import annotations

import json
import threading
import time

from loramill.domain.status import JobStatus
from loramill.jobs.contracts import JobEvent, Progress
from tests.gateway.api.conftest import Api


def read_events(api: Api, job_id: str, headers: dict[str, str]) -> list[tuple[int, str, dict]]:
    """(id, event, data) of every event until the server ends the stream."""
    events, current = [], {}
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                name, _, value = line.partition(": ")
                current[name] = value
            elif not line and "data" in current:
                events.append((int(current["id"]), current["event"], json.loads(current["data"])))
                current = {}
    return events


def run_fake_worker(api: Api, job_id: str, steps: int = 3) -> threading.Thread:
    """Drive the job through the store the way the worker does, a little later."""
    def work() -> None:
        time.sleep(0.2)
        api.store.transition(job_id, JobStatus.PROCESSING,
                             event=JobEvent(task_id=job_id, user_id="alice", status="processing").to_dict())
        for step in range(1, steps + 1):
            progress = Progress(step=step, total_steps=steps, stage="train")
            api.store.set_progress(job_id, progress.model_dump(by_alias=True))
            api.store.append_event(job_id, JobEvent(task_id=job_id, user_id="alice", status="processing",
                                                    progress=progress).to_dict())
            time.sleep(0.05)
        done = JobEvent(task_id=job_id, user_id="alice", status="completed",
                        model_path=f"users/alice/models/{job_id}.safetensors")
        api.store.transition(job_id, JobStatus.COMPLETED, result=done.to_dict(), event=done.to_dict())

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_job_events_stream_progress_until_completed(api: Api) -> None:
    job = api.client.post("/v1/generations", json={"prompt": "x"}, headers=api.auth("alice")).json()
    worker = run_fake_worker(api, job["id"])

    events = read_events(api, job["id"], api.auth("alice"))
    worker.join()

    kinds = [(kind, data["status"]) for _, kind, data in events]
    assert kinds == [("status", "queued"), ("status", "processing"), *[("progress", "processing")] * 3,
                     ("status", "completed")]
    assert [data["progress"]["step"] for _, kind, data in events if kind == "progress"] == [1, 2, 3]
    assert events[-1][2]["modelPath"] == f"users/alice/models/{job['id']}.safetensors"
    ids = [event_id for event_id, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_job_events_resume_after_last_event_id(api: Api) -> None:
    job = api.client.post("/v1/generations", json={"prompt": "x"}, headers=api.auth("alice")).json()
    run_fake_worker(api, job["id"]).join()
    everything = read_events(api, job["id"], api.auth("alice"))

    resumed = read_events(api, job["id"], api.auth("alice") | {"Last-Event-ID": str(everything[2][0])})

    assert resumed == everything[3:]


def test_job_events_of_finished_job_end_at_once(api: Api) -> None:
    job = api.client.post("/v1/generations", json={"prompt": "x"}, headers=api.auth("alice")).json()
    api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth("alice"))

    events = read_events(api, job["id"], api.auth("alice"))

    assert [data["status"] for _, _, data in events] == ["queued", "canceled"]
