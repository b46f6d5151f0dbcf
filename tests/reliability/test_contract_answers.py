"""A refused job whose taskId can be read is answered, whatever made the message unreadable.

Python's ``json.dumps`` writes ``NaN``, ``Infinity`` and lone surrogate escapes; a sender using it is
waiting on the output topic for its taskId. Found by tests/reliability/test_hostile_worker.py: such
messages were only dead-lettered, so the sender never heard back.
"""

from __future__ import annotations

import json

import pytest

from loramill.errors import InvalidInput
from loramill.jobs.contracts import failed_event_for, parse_job


@pytest.mark.parametrize("body", [
    json.dumps({"taskId": "t-nan", "userId": "u", "prompt": "a cat", "guidanceScale": float("nan")}).encode(),
    json.dumps({"taskId": "t-inf", "userId": "u", "images": ["users/u/a.jpg"],
                "configurationParams": {"learningRate": float("inf")}}).encode(),
    json.dumps({"taskId": "t-sur", "userId": "u", "prompt": "a \ud800 cat"}).encode(),
    b'{"taskId": "t-ctl", "userId": "u", "prompt": "a \x01 cat"}',
], ids=["nan", "infinity", "lone-surrogate", "raw-control-char"])
def test_answer_refused_job_with_readable_task_id(body: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_job(body)
    assert refused.value.code == "invalid_json"

    event = failed_event_for(body, refused.value)

    assert event is not None and event.task_id == json.loads(body, strict=False)["taskId"]
    assert event.error is not None and event.error.code == "invalid_json" and event.user_id == "u"


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[1, 2]", b'{"taskId": "../x", "prompt": NaN}', b"NaN"])
def test_no_answer_without_usable_task_id(body: bytes) -> None:
    assert failed_event_for(body, InvalidInput("x")) is None
