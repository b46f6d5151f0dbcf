"""The per-user storage quota: usage measured once per window, kept current by the writes, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.storage.quota import StorageQuota
from loramill.errors import QuotaExceeded


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "storage")
    storage.put_bytes("users/alice/images/a.jpg", b"a" * 600, "image/jpeg")
    storage.put_bytes("users/bob/images/b.jpg", b"b" * 900, "image/jpeg")
    return storage


def test_refuse_write_that_would_pass_the_quota_naming_the_setting(storage: LocalStorage) -> None:
    quota = StorageQuota(storage, 1000)

    quota.check("alice", 400, what="these uploads")  # 600 + 400: just fits
    with pytest.raises(QuotaExceeded) as refused:
        quota.check("alice", 401, what="these uploads", field="images")

    assert refused.value.code == "storage_quota_exceeded" and refused.value.field == "images"
    assert "600 bytes" in refused.value.message and "LORAMILL_USER_STORAGE_BYTES" in refused.value.message
    quota.check("bob", 100, what="this LoRA")  # bob's 900 are his own


def test_measure_usage_once_then_count_the_writes(storage: LocalStorage) -> None:
    now = [0.0]
    quota = StorageQuota(storage, 10_000, ttl=60, clock=lambda: now[0])
    for _ in range(5):
        quota.check("alice", 100, what="an upload")
        storage.put_bytes(f"users/alice/images/{now[0]}.jpg", b"x" * 100, "image/jpeg")
        quota.added("alice", 100)
        now[0] += 1

    assert quota.measures == 1  # one listing for five uploads, not five
    assert quota.used("alice") == 600 + 500 == storage.usage("users/alice/")


def test_measure_again_after_the_window_or_a_delete(storage: LocalStorage) -> None:
    now = [0.0]
    quota = StorageQuota(storage, 10_000, ttl=60, clock=lambda: now[0])
    assert quota.used("alice") == 600
    storage.put_bytes("users/alice/images/elsewhere.jpg", b"x" * 50, "image/jpeg")  # another process's write

    assert quota.used("alice") == 600  # unseen within the window
    now[0] = 61
    assert quota.used("alice") == 650
    storage.delete("users/alice/images/a.jpg")
    quota.forget("alice")
    assert quota.used("alice") == 50 and quota.measures == 3


def test_zero_means_no_limit_and_no_listing(storage: LocalStorage) -> None:
    quota = StorageQuota(storage, 0)
    quota.check("alice", 10**12, what="a huge upload")
    assert quota.measures == 0
