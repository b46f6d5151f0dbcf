"""Per-user storage quota (``LORAMILL_USER_STORAGE_BYTES``): what a user's files under ``users/{userId}/``
may take, checked before each write by the gateway (uploads) and the worker (LoRAs, sample and generated
images).

Listing a user's prefix costs one request per 1,000 objects on S3 (a walk of the folder on local storage),
so usage is measured once and then kept current: each write made through this process adds its bytes,
and the measure is taken again after ``ttl`` seconds, which counts deletions and other processes' writes.
Between two measures, other processes may add up to what they write in ``ttl`` seconds unseen: the quota
is a bound to within that, not to the byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loramill.adapters.storage.base import Storage
from loramill.domain.keys import user_prefix
from loramill.errors import QuotaExceeded

USAGE_TTL_SECONDS = 60.0


class QuotaSettings(BaseSettings):
    """The quota, declared once: the gateway's and the worker's settings both inherit it."""

    model_config = SettingsConfigDict(env_prefix="LORAMILL_", extra="ignore", populate_by_name=True)

    user_storage_bytes: int = Field(default=5 * 1024**3, ge=0, description="bytes one user's files (uploads, LoRAs "
                                    "and images under users/{userId}/) may take in storage; the API answers an "
                                    "upload that would pass it with 413 storage_quota_exceeded, and a job whose "
                                    "LoRA or images would pass it fails with that code (0 = no limit)")


@dataclass
class _Usage:
    bytes: int
    measured_at: float


class StorageQuota:
    """Checks writes against the per-user quota, with each user's usage cached (see the module docstring)."""

    def __init__(self, storage: Storage, limit_bytes: int, *, ttl: float = USAGE_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage, self.limit, self.ttl = storage, limit_bytes, ttl
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()
        self.measures = 0  # listings made (for tests)

    def check(self, user_id: str, incoming: int, *, what: str, field: str | None = None) -> None:
        """``QuotaExceeded`` if ``incoming`` more bytes (``what``) would take ``user_id`` past the quota."""
        if not self.limit:
            return
        used = self.used(user_id)
        if used + incoming > self.limit:
            taken = f"{what} {incoming} more" if incoming else f"nothing more fits ({what})"
            raise QuotaExceeded(f"your files take {used} bytes and {taken}; the limit per user is {self.limit} "
                                "(LORAMILL_USER_STORAGE_BYTES); delete LoRAs you no longer need "
                                "(DELETE /v1/loras/{id})", field=field)

    def added(self, user_id: str, nbytes: int) -> None:
        """``nbytes`` were written for ``user_id`` through this process."""
        with self._lock:
            usage = self._usage.get(user_id)
            if usage is not None:
                usage.bytes += nbytes

    def forget(self, user_id: str) -> None:
        """Measure ``user_id`` again at the next check (after deleting their files)."""
        with self._lock:
            self._usage.pop(user_id, None)

    def used(self, user_id: str) -> int:
        """Bytes under the user's prefix: cached, measured again after ``ttl`` seconds."""
        now = self._clock()
        with self._lock:
            usage = self._usage.get(user_id)
            if usage is not None and now - usage.measured_at < self.ttl:
                return usage.bytes
        measured = self.storage.usage(user_prefix(user_id))  # outside the lock: a listing may take seconds
        self.measures += 1
        with self._lock:
            self._usage[user_id] = _Usage(measured, now)
        return measured
