"""Local-folder storage: nothing escapes the root, writes are atomic, OS errors are translated."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from loramill.adapters.storage.local import LocalStorage
from loramill.errors import InvalidInput, LoramillError, NotFound, TransientError


def test_store_object_as_file_under_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)

    storage.put_bytes("users/u/images/a.jpg", b"x")

    assert (tmp_path / "users" / "u" / "images" / "a.jpg").read_bytes() == b"x"
    assert storage.path_of("users/u/images/a.jpg") == tmp_path.resolve() / "users/u/images/a.jpg"


def test_refuse_key_through_symlink_leaving_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    storage = LocalStorage(tmp_path / "root")
    os.symlink(outside, tmp_path / "root" / "users")

    with pytest.raises(InvalidInput, match="outside the storage root"):
        storage.get_bytes("users/secret.txt")
    with pytest.raises(InvalidInput):
        storage.put_bytes("users/new.txt", b"x")
    assert not (outside / "new.txt").exists()
    assert storage.list("users/") == [] and storage.list("") == []


def test_refuse_key_in_staging_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        LocalStorage(tmp_path).put_bytes(".loramill-tmp/x", b"x")


def test_list_hides_staging_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / ".loramill-tmp" / "half-written").write_bytes(b"x")
    storage.put_bytes("a/b.txt", b"x")

    assert storage.list("") == ["a/b.txt"]


def test_get_directory_key_raises_not_found(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("users/u/images/a.jpg", b"x")

    with pytest.raises(NotFound):
        storage.get_bytes("users/u")


def test_url_with_base_url_and_without(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path, base_url="http://h/files").url("users/u/a b.png".replace(" ", "_")) == \
        "http://h/files/users/u/a_b.png"
    assert LocalStorage(tmp_path).url("users/u/a.png") is None


def test_translate_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("users/u/a.txt", b"x")
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied")))

    with pytest.raises(LoramillError) as caught:
        storage.get_bytes("users/u/a.txt")
    assert caught.value.code == "storage_permission_denied" and not caught.value.retryable


def test_translate_full_disk_to_transient_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path)
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))

    with pytest.raises(TransientError, match="No space left"):
        storage.put_bytes("users/u/a.txt", b"x")
    assert not storage.exists("users/u/a.txt")
