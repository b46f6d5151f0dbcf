"""The SQL job store: jobs and events, the LoRA registry, users and API keys, the ``sql`` broker's queue."""

from loramill.adapters.store.job_store import JobStore
from loramill.adapters.store.migrate import upgrade
from loramill.adapters.store.records import ApiKeyRecord, EventRecord, JobRecord, LoraRecord, Page, UserRecord
from loramill.adapters.store.settings import StoreSettings

__all__ = ["ApiKeyRecord", "EventRecord", "JobRecord", "JobStore", "LoraRecord", "Page", "StoreSettings",
           "UserRecord", "upgrade"]
