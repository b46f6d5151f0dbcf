"""Progress reporting: the engine calls a callback, it never prints from deep inside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """One progress report: ``stage`` (``dataset``, ``cache``, ``train``, ``generate``…), ``step`` of ``total``."""

    stage: str
    step: int
    total: int
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default callback: report nothing."""


class StopRequested(Exception):
    """Raised by a progress callback to stop the engine at the next step (cancel, SIGTERM)."""
