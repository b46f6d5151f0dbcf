"""The storage port: inputs, LoRAs, images and checkpoints by key (SPEC.md 3.5 layout)."""

from __future__ import annotations

import posixpath
import re
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote

from loramill.errors import InvalidInput

_KEY_CHARS = re.compile(r"^[A-Za-z0-9._\-/@+=]+$")
MAX_KEY_LENGTH = 1024  # S3's limit; also keeps local paths under every filesystem's PATH_MAX


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key, else raise ``InvalidInput`` naming it.

    Refuses absolute paths, ``..`` segments (also URL-encoded), backslashes, empty segments and
    control characters, so no key can escape a local root or address another tenant's prefix by
    trickery.
    """
    if not isinstance(key, str) or not key:
        raise InvalidInput("storage key is empty; give a path like users/<userId>/images/a.jpg",
                           code="invalid_storage_key", field="key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"storage key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}",
                           code="invalid_storage_key", field="key")
    if "://" in key or key.lower().startswith(("http:", "https:", "s3:", "data:")):
        raise InvalidInput(f"storage key {key[:200]!r} is a URL, not a key; upload the file (or fetch it with "
                           "`loramill dataset prepare URL`) and give its key, like users/<userId>/images/a.jpg",
                           code="invalid_storage_key", field="key")
    decoded = key
    for _ in range(3):  # catch %2e%2e and double encodings
        decoded = unquote(decoded)
    for candidate in (key, decoded):
        if candidate.startswith("/") or "\\" in candidate or "\x00" in candidate:
            raise InvalidInput(f"storage key {key!r} must be a relative path with '/' separators",
                               code="invalid_storage_key", field="key")
        parts = candidate.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"storage key {key!r} has an empty, '.' or '..' segment; "
                               "keys may not leave their prefix", code="invalid_storage_key", field="key")
        if any(len(p) > 255 for p in parts):
            raise InvalidInput(f"storage key {key[:80]!r}... has a segment longer than 255 characters, "
                               "which no filesystem stores; shorten it", code="invalid_storage_key", field="key")
    if not _KEY_CHARS.match(key):
        raise InvalidInput(f"storage key {key!r} has characters outside A-Z a-z 0-9 . _ - / @ + =",
                           code="invalid_storage_key", field="key")
    return posixpath.normpath(key)


class Storage(ABC):
    """Object storage by key. Implementations: ``local`` (a folder) and ``s3``."""

    name: str = "storage"

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, path: Path) -> Path: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def url(self, key: str, expires_in: int = 3600) -> str | None:
        """A URL a client can fetch the object from (presigned for S3), or ``None`` if not served."""
