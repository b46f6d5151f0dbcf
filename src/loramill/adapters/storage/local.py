"""Local-folder storage: the embedded default. Keys are validated and nothing escapes the root."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from loramill.adapters.storage.base import Storage
from loramill.domain.keys import validate_key
from loramill.errors import InvalidInput, LoramillError, NotFound, TransientError

# Writes land in a temporary file first and are renamed into place, so a reader never sees half a
# file. The temporary files live in one hidden folder that no key may address.
_TMP_DIR = ".loramill-tmp"


class LocalStorage(Storage):
    """Objects are files under ``root``; a key ``users/u/images/a.jpg`` is ``root/users/u/images/a.jpg``."""

    name = "local"

    def __init__(self, root: Path | str, *, base_url: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        with _translate(str(self.root)):
            (self.root / _TMP_DIR).mkdir(parents=True, exist_ok=True)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` under ``key``, replacing any previous object atomically."""
        path = self._path(key)
        with _translate(key), self._staging() as tmp:
            tmp.write_bytes(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Copy the file at ``path`` to ``key``."""
        target = self._path(key)
        with _translate(key), self._staging() as tmp:
            shutil.copyfile(path, tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ``NotFound`` if there is none."""
        path = self._path(key)
        with _translate(key):
            return path.read_bytes()

    def get_file(self, key: str, path: Path) -> Path:
        """Copy the object to ``path`` (parents created) and return ``path``; a partial copy never
        appears under ``path`` (a worker's concurrent jobs read a LoRA file as soon as it exists)."""
        source = self._path(key)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            with _translate(key):
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, tmp)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (as on S3)."""
        path = self._path(key)
        with _translate(key):
            path.unlink(missing_ok=True)

    def usage(self, prefix: str) -> int:
        """Bytes stored under ``prefix``, from the files' sizes."""
        return sum((self.root / key).stat().st_size for key in self.list(prefix))

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (``""`` for all), sorted."""
        if prefix:
            validate_key(prefix.rstrip("/") or "/")
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        # A symlinked folder could lead outside the root; its files are not ours to list.
        if not folder.is_dir() or not folder.resolve().is_relative_to(self.root):
            return []
        keys = []
        with _translate(prefix):
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not (Path(dirpath) == self.root and d == _TMP_DIR)]
                for filename in filenames:
                    key = (Path(dirpath) / filename).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    def url(self, key: str, expires_in: int = 3600) -> str | None:
        """``base_url`` + key when the gateway serves the folder, else ``None``."""
        key = validate_key(key)
        return self.base_url + quote(key) if self.base_url else None

    def path_of(self, key: str) -> Path:
        """The file that holds ``key`` (for the gateway to stream it without a copy)."""
        return self._path(key)

    def _path(self, key: str) -> Path:
        key = validate_key(key)
        if key.split("/", 1)[0] == _TMP_DIR:
            raise InvalidInput(f"storage key {key!r} is in the reserved folder {_TMP_DIR}",
                               code="invalid_storage_key", field="key")
        path = self.root / key
        # A symlink planted inside the root could still lead outside it; follow it and check.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidInput(f"storage key {key!r} resolves outside the storage root",
                               code="invalid_storage_key", field="key")
        return path

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        tmp = self.root / _TMP_DIR / uuid.uuid4().hex
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def _translate(key: str) -> Iterator[None]:
    """OS errors → the error tree: missing is NotFound, a full or failing disk is worth a retry."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"no object stored under {key!r}", field="key") from None
    except PermissionError as exc:
        raise LoramillError(f"permission denied writing or reading {key!r} in local storage ({exc.strerror}); "
                            "fix the folder's owner or LORAMILL_STORAGE_ROOT",
                            code="storage_permission_denied") from None
    except OSError as exc:
        retry = exc.errno in (errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EDQUOT, errno.EBUSY)
        text = f"local storage failed on {key!r}: {exc.strerror or exc}"
        if retry:
            raise TransientError(text) from None
        raise LoramillError(text, code="storage_error") from None
