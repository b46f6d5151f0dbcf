"""``loramill.config``: building the worker's parts from the environment."""

from __future__ import annotations

import uuid

import pytest

from loramill.config import load_config, open_broker


@pytest.mark.parametrize(("jobs", "prefetch", "expected"), [("generate", None, 16), ("train,generate", None, 1),
                                                            ("generate", "3", 3)])
def test_rabbitmq_prefetch_lets_a_generation_worker_hold_a_batch(monkeypatch: pytest.MonkeyPatch, rabbitmq_url: str,
                                                                 jobs: str, prefetch: str | None,
                                                                 expected: int) -> None:
    """A generation-only worker gets as many unacked jobs as it holds (2 × LORAMILL_GENERATION_BATCH);
    one that also trains keeps 1; an operator's LORAMILL_RABBITMQ_PREFETCH_COUNT always wins."""
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    for key, value in {"LORAMILL_BROKER": "rabbitmq", "LORAMILL_RABBITMQ_URL": rabbitmq_url,
                       "LORAMILL_RABBITMQ_INPUT_QUEUE": f"{name}.jobs", "LORAMILL_RABBITMQ_OUTPUT_QUEUE": f"{name}.events",
                       "LORAMILL_WORKER_JOBS": jobs, "LORAMILL_GENERATION_BATCH": "8"}.items():
        monkeypatch.setenv(key, value)
    if prefetch is None:
        monkeypatch.delenv("LORAMILL_RABBITMQ_PREFETCH_COUNT", raising=False)
    else:
        monkeypatch.setenv("LORAMILL_RABBITMQ_PREFETCH_COUNT", prefetch)
    broker = open_broker(load_config(), store=None)  # type: ignore[arg-type]
    try:
        assert broker.settings.prefetch_count == expected  # type: ignore[attr-defined]
    finally:
        broker.close()
