"""What the worker does with each kind of job: ``train`` and ``generate``, one module each, one signature.

A handler takes a ``JobContext`` and returns the job's ``completed`` event; it raises ``LoramillError``
for a failure and ``StopRequested`` when told to stop (cancel, shutdown).
"""

from __future__ import annotations

from collections.abc import Callable

from loramill.domain.status import JobKind
from loramill.jobs.contracts import JobEvent
from loramill.jobs.handlers.context import JobContext

Handler = Callable[[JobContext], JobEvent]


def handler_for(kind: str) -> Handler:
    """The handler of job ``kind`` (``train`` or ``generate``); heavy imports happen on first use."""
    if kind == JobKind.TRAIN:
        from loramill.jobs.handlers.train import handle_training

        return handle_training
    if kind == JobKind.GENERATE:
        from loramill.jobs.handlers.generate import handle_generation

        return handle_generation
    raise ValueError(f"no handler for job kind {kind!r}")


__all__ = ["Handler", "JobContext", "handler_for"]
