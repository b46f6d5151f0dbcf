"""Storage fixtures: every port test runs against the local folder and against S3 (moto over HTTP)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from loramill.adapters.storage.base import Storage


@pytest.fixture
def local_storage(tmp_path: Path) -> Storage:
    from loramill.adapters.storage.local import LocalStorage

    return LocalStorage(tmp_path / "root", base_url="http://files.test/f")


@pytest.fixture
def s3_storage(s3_env: dict[str, str]) -> Storage:
    """An S3Storage on a fresh bucket of the session's moto server."""
    from loramill.adapters.storage.s3 import S3Storage

    storage = S3Storage(f"t-{uuid.uuid4().hex[:16]}", endpoint=s3_env["S3_ENDPOINT"],
                        access_key=s3_env["S3_ACCESS_KEY"], secret_key=s3_env["S3_SECRET_KEY"],
                        region=s3_env["S3_REGION"], use_ssl=False)
    storage.ensure_bucket()
    return storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> Storage:
    return request.getfixturevalue(f"{request.param}_storage")
