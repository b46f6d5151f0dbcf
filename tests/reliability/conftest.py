"""Reliability tests: faults, hostile input, tenancy and load, proven with real services (issue 7).

Fast cases run in ``make test``. Long soak and load runs carry ``@pytest.mark.soak`` and are skipped
unless ``LORAMILL_SOAK=1`` (``make soak``), so the default suite stays within its time budget.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LORAMILL_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak run: LORAMILL_SOAK=1 (make soak) runs it")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)
