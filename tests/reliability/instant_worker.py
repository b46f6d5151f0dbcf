"""``python -m tests.reliability.instant_worker [worker args]``: ``loramill worker`` with an instant engine.

For the load test only: everything but the engine (settings, broker, store, storage, claim, publish,
ack, logging, /metrics) is the shipped worker process; each job finishes the moment it is claimed.
"""

from __future__ import annotations

import sys

import loramill.jobs.worker as worker_module
from loramill.cli import main
from tests.reliability.helpers import InstantEngine

if __name__ == "__main__":
    engine = InstantEngine()
    worker_module.handler_for = lambda kind: engine  # type: ignore[assignment]
    sys.exit(main(["worker", *sys.argv[1:]]))
