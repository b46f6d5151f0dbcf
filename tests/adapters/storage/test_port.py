"""The storage port, one table of behaviour run against every backend (local folder and S3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramill.adapters.storage.base import Storage
from loramill.errors import InvalidInput, NotFound

KEY = "users/u-1/images/a.jpg"


def test_put_and_get_bytes(storage: Storage) -> None:
    storage.put_bytes(KEY, b"\x89PNG data", content_type="image/png")

    assert storage.get_bytes(KEY) == b"\x89PNG data"
    assert storage.exists(KEY)


def test_put_bytes_overwrites_object(storage: Storage) -> None:
    storage.put_bytes(KEY, b"old")
    storage.put_bytes(KEY, b"new")

    assert storage.get_bytes(KEY) == b"new"


def test_put_and_get_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "lora.safetensors"
    source.write_bytes(b"x" * 100_000)

    storage.put_file("users/u-1/models/t-1.safetensors", source)
    copy = storage.get_file("users/u-1/models/t-1.safetensors", tmp_path / "out" / "copy.safetensors")

    assert copy.read_bytes() == source.read_bytes()
    assert [p.name for p in copy.parent.iterdir()] == ["copy.safetensors"]  # no partial files left behind


def test_get_missing_key_raises_not_found(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        storage.get_bytes("users/u-1/images/missing.jpg")
    with pytest.raises(NotFound):
        storage.get_file("users/u-1/images/missing.jpg", tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    assert not storage.exists("users/u-1/images/missing.jpg")


def test_delete_removes_object_and_tolerates_missing(storage: Storage) -> None:
    storage.put_bytes(KEY, b"x")

    storage.delete(KEY)
    storage.delete(KEY)

    assert not storage.exists(KEY)


def test_list_keys_by_prefix(storage: Storage) -> None:
    for key in ["users/a/images/1.jpg", "users/a/images/2.jpg", "users/a/models/t.safetensors",
                "users/ab/images/1.jpg", "checkpoints/t/state.pt"]:
        storage.put_bytes(key, b"x")

    assert storage.list("users/a/") == ["users/a/images/1.jpg", "users/a/images/2.jpg",
                                        "users/a/models/t.safetensors"]
    assert storage.list("users/a/images/2") == ["users/a/images/2.jpg"]
    assert storage.list("users/a") == storage.list("users/a/") + ["users/ab/images/1.jpg"]
    assert len(storage.list("")) == 5
    assert storage.list("nothing/") == []


@pytest.mark.parametrize("key", [
    "../outside.txt", "users/../../etc/passwd", "/etc/passwd", "%2e%2e/secret", "users/%252e%252e/x",
    "users\\..\\x", "users//x", "users/./x", "", "users/x\x00.jpg", "users/" + "a" * 300,
])
def test_refuse_unsafe_key(storage: Storage, key: str, tmp_path: Path) -> None:
    for call in (lambda: storage.put_bytes(key, b"x"), lambda: storage.get_bytes(key),
                 lambda: storage.exists(key), lambda: storage.delete(key), lambda: storage.url(key),
                 lambda: storage.get_file(key, tmp_path / "x")):
        with pytest.raises(InvalidInput) as caught:
            call()
        assert caught.value.code == "invalid_storage_key"


def test_list_refuses_traversal_prefix(storage: Storage) -> None:
    with pytest.raises(InvalidInput):
        storage.list("../")


def test_usage_sums_bytes_under_prefix_only(storage: Storage) -> None:
    storage.put_bytes("users/u1/images/a.png", b"x" * 100)
    storage.put_bytes("users/u1/models/m.safetensors", b"y" * 23)
    storage.put_bytes("users/u10/images/b.png", b"z" * 7)  # shares the prefix text "users/u1", not the folder

    assert storage.usage("users/u1/") == 123
    assert storage.usage("users/u10/") == 7 and storage.usage("users/nobody/") == 0
