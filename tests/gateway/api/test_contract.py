"""API contract tests generated from the OpenAPI document by schemathesis (bounded: a few cases per operation).

Every operation is called with a valid key and generated inputs; each answer must match the documented
status codes, content types and schemas, and nothing may be a 5xx. The number of cases run is written to
tests/artifacts/schemathesis-cases.json.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.gateway.api.conftest import make_api

# The schema is read at import (schemathesis parametrizes from it), so the app is made then; its folder
# goes when the process ends, also when this module is only collected (atexit, not a fixture).
_HOME = Path(tempfile.mkdtemp(prefix="loramill-contract-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
_API = make_api(_HOME)
schema = schemathesis.openapi.from_asgi("/openapi.json", _API.client.app)
# The event stream of a job that exists stays open until the job ends (there is no worker here).
schema = schema.exclude(path_regex=r".*/events$")
# Job creation checks more than a schema can say (uploads must decode as images, prompts may not hold
# control characters, LoRA ids must exist) and a cursor is opaque (only ones the API returned work):
# schema-valid requests may be refused there, so only the "must be accepted" check is off for them;
# every other check still runs.
SEMANTIC = {"POST /v1/trainings", "POST /v1/generations", "PUT /v1/jobs/{job_id}", "GET /v1/jobs"}
CASES: Counter[str] = Counter()
ARTIFACT = Path(__file__).resolve().parents[2] / "artifacts" / "schemathesis-cases.json"


@pytest.fixture(scope="module", autouse=True)
def record_case_count() -> Iterator[None]:
    yield
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps({"total": sum(CASES.values()), "by_operation": dict(sorted(CASES.items()))},
                                   indent=2))


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_openapi(case: schemathesis.Case) -> None:
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    CASES[operation] += 1
    case.call_and_validate(headers={"Authorization": f"Bearer {_API.keys['alice']}"},
                           excluded_checks=[positive_data_acceptance] if operation in SEMANTIC else None)
