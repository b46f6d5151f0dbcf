"""Settings regressions the reliability runs tripped over.

``LORAMILL_WORKERS=0 loramill serve`` is the documented API-only topology (src/loramill/gateway/serve.py,
docs/operations.md) and what the 2,000-submission load run starts. WorkerSettings gained a ``workers``
field (the load policy's wait estimate) read from the same variable with ``ge=1``, so the API-only
process refused to start: "LORAMILL_WORKERS: Input should be greater than or equal to 1".
"""

from __future__ import annotations

import pytest

from loramill.config import load_config
from loramill.gateway.settings import load_gateway_settings


def test_start_api_only_serve_with_workers_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("LORAMILL_WORKERS", "0")
    monkeypatch.setenv("LORAMILL_HOME", str(tmp_path))

    config = load_config()  # what `loramill serve` reads first

    assert load_gateway_settings().workers == 0
    assert config.worker is not None
