"""Property-based fuzzing past the parser: generated messages through a real ``Worker.handle``, and a longer
schemathesis run of the HTTP API (``make soak``).

tests/jobs/test_contracts.py fuzzes ``parse_job`` (2,500 cases) and tests/gateway/api/test_contract.py
runs schemathesis (8 examples per operation). Here every generated message goes onto the SQL queue and
through the worker (engine instant): whatever the bytes, ``handle`` returns an outcome, the delivery is
settled, a parsed job completes once, and a refused one with a readable taskId gets its ``failed``
event. Case counts land in tests/reliability/figures/.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.errors import InvalidInput
from loramill.jobs.contracts import parse_job
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.jobs.test_contracts import _jobs
from tests.reliability.helpers import InstantEngine, record_figure

FAST_CASES, SOAK_CASES = 300, 5000
OUTCOMES = {"completed", "failed", "dead_lettered", "duplicate"}

_valid = st.fixed_dictionaries({
    "taskId": st.uuids().map(str), "userId": st.sampled_from(["u-1", "u-2", "12345"]),
    "prompt": st.text(min_size=1, max_size=40)},
    optional={"width": st.sampled_from([64, 512, 63, 0, -8, 4096]), "steps": st.integers(-5, 300),
              "seed": st.integers(-1, 2**33), "guidanceScale": st.floats(allow_nan=True, allow_infinity=True),
              "loras": st.just([])})
_messages = (st.binary(max_size=200)
             | _jobs.map(lambda d: json.dumps(d).encode())
             | _valid.map(lambda d: json.dumps(d).encode()))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, SqlBroker]]:
    home = tmp_path_factory.mktemp("fuzz")
    store = JobStore(f"sqlite:///{home / 'loramill.db'}")
    broker = SqlBroker(store, lease_seconds=60)
    settings_ = WorkerSettings(work_dir=home / "work", retry_base_seconds=0.01, handback_seconds=0,
                               receive_timeout=0.1, progress_interval=60)
    with pytest.MonkeyPatch.context() as patch:
        engine = InstantEngine()
        patch.setattr("loramill.jobs.worker.handler_for", lambda kind: engine)
        yield Worker(settings_, broker, store, LocalStorage(home / "storage")), broker
    broker.close()
    store.close()


def fuzz_worker(rig: tuple[Worker, SqlBroker], cases: int) -> dict[str, Any]:
    worker, broker = rig
    outcomes: Counter[str] = Counter()
    seen: dict[str, tuple[str, str]] = {}  # taskId -> (userId, kind) of the job that claimed it

    @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_messages)
    def one(body: bytes) -> None:
        try:
            job = parse_job(body)
        except InvalidInput:
            job = None
        broker.publish_job(body, task_id="fuzz")
        delivery = broker.receive(2)
        assert delivery is not None
        outcome = worker.handle(delivery)
        outcomes[outcome] += 1
        assert outcome in OUTCOMES, outcome
        assert broker.queue_depth() == 0  # settled: acked or dead-lettered, never left hanging
        if job is not None:
            owner = seen.setdefault(job.task_id, (job.user_id, job.kind))
            if owner != (job.user_id, job.kind):
                assert outcome == "dead_lettered"  # another job reusing a taken taskId: Conflict
            else:
                assert outcome in ("completed", "duplicate")
        else:
            assert outcome == "dead_lettered"
        broker.consume_events(0)

    one()
    return {"cases": sum(outcomes.values()), "outcomes": dict(outcomes)}


def test_fuzz_worker_handle_with_generated_messages(rig: tuple[Worker, SqlBroker]) -> None:
    figures = fuzz_worker(rig, FAST_CASES)
    assert figures["cases"] >= FAST_CASES // 2
    record_figure("fuzz_worker_fast", figures)


@pytest.mark.soak
def test_fuzz_worker_handle_soak(rig: tuple[Worker, SqlBroker]) -> None:
    figures = fuzz_worker(rig, SOAK_CASES)
    record_figure("fuzz_worker_soak", figures)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_fuzz_api_with_schemathesis_soak(tmp_path: Path) -> None:
    """The contract test's checks with 50 examples per operation instead of 8."""
    import schemathesis
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    from tests.gateway.api.conftest import make_api

    api = make_api(tmp_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app).exclude(path_regex=r".*/events$")
    semantic = {"POST /v1/trainings", "POST /v1/generations", "PUT /v1/jobs/{job_id}", "GET /v1/jobs"}
    counts: Counter[str] = Counter()
    failures: list[str] = []
    def runner(operation: Any, name: str) -> Any:
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            counts[name] += 1
            case.call_and_validate(headers={"Authorization": f"Bearer {api.keys['alice']}"},
                                   excluded_checks=[positive_data_acceptance] if name in semantic else None)

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        try:
            runner(operation, name)()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then fail once
            failures.append(f"{name}: {str(exc)[:500]}")
    api.broker.close()
    api.store.close()
    record_figure("fuzz_api_soak", {"cases": sum(counts.values()), "by_operation": dict(sorted(counts.items())),
                                    "failures": len(failures)})
    assert not failures, "\n\n".join(failures)
