"""The storage port: bytes under keys.

Which keys are safe and where each kind of object lives are domain rules (``loramill.domain.keys``);
an adapter checks every key with ``validate_key`` before it touches a path or a bucket, and stores
whatever it is given under it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


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

    def usage(self, prefix: str) -> int:
        """Bytes stored under ``prefix`` (per-user storage quotas). Adapters answer from their listings;
        this fallback reads every object."""
        return sum(len(self.get_bytes(key)) for key in self.list(prefix))

    @abstractmethod
    def url(self, key: str, expires_in: int = 3600) -> str | None:
        """A URL a client can fetch the object from (presigned for S3), or ``None`` if not served."""
