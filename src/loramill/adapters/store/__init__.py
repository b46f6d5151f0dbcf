"""The SQL job store: jobs and events, the LoRA registry, users and API keys, the ``sql`` broker's queue.

``JobStore`` implements the store ports of ``loramill.domain.ports``; the records it returns are the
domain's (``loramill.domain.records``).
"""

from loramill.adapters.store.job_store import JobStore
from loramill.adapters.store.migrate import upgrade
from loramill.adapters.store.settings import StoreSettings

__all__ = ["JobStore", "StoreSettings", "upgrade"]
