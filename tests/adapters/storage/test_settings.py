"""Storage settings from the environment and the factory that picks a backend by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramill.adapters.storage import make_storage
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.storage.s3 import S3Storage
from loramill.adapters.storage.settings import StorageSettings, load_storage_settings
from loramill.errors import InvalidInput
from tests.services.s3 import S3_TEST_SECRET_KEY

_VARS = ["LORAMILL_STORAGE", "LORAMILL_STORAGE_ROOT", "LORAMILL_HOME", "S3_ENDPOINT", "S3_ACCESS_KEY",
         "S3_SECRET_KEY", "S3_REGION", "S3_BUCKET", "S3_USE_SSL"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)


def test_make_local_storage_by_default_under_loramill_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAMILL_HOME", str(tmp_path))

    storage = make_storage()

    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "storage").resolve()


def test_make_s3_storage_from_selfix_variables(monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]) -> None:
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LORAMILL_STORAGE", "s3")

    storage = make_storage()
    storage.put_bytes("users/u/images/a.jpg", b"x")

    assert isinstance(storage, S3Storage) and storage.get_bytes("users/u/images/a.jpg") == b"x"
    assert S3_TEST_SECRET_KEY not in repr(load_storage_settings())


def test_refuse_unknown_backend_listing_supported() -> None:
    with pytest.raises(InvalidInput, match="use one of: local, s3") as caught:
        make_storage(StorageSettings(backend="gcs"))
    assert caught.value.field == "LORAMILL_STORAGE"


def test_refuse_bad_setting_naming_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_USE_SSL", "perhaps")

    with pytest.raises(InvalidInput) as caught:
        make_storage()
    assert caught.value.field == "S3_USE_SSL"
