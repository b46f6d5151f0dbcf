"""Storage adapters: ``local`` (a folder, the embedded default) and ``s3`` (any S3-compatible store).

``make_storage(settings)`` picks one by name from a table; boto3 is imported only when ``s3`` is used.
"""

from __future__ import annotations

from collections.abc import Callable

from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.settings import StorageSettings, load_storage_settings
from loramill.errors import InvalidInput


def _local(settings: StorageSettings) -> Storage:
    from loramill.adapters.storage.local import LocalStorage

    return LocalStorage(settings.root, base_url=settings.base_url)


def _s3(settings: StorageSettings) -> Storage:
    from loramill.adapters.storage.s3 import S3Storage

    return S3Storage(settings.s3_bucket or "", endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
                     secret_key=settings.s3_secret_key, region=settings.s3_region, use_ssl=settings.s3_use_ssl,
                     public_endpoint=settings.s3_public_endpoint, url_expires=settings.url_expires)


BACKENDS: dict[str, Callable[[StorageSettings], Storage]] = {"local": _local, "s3": _s3}


def make_storage(settings: StorageSettings | None = None) -> Storage:
    """The storage ``settings`` (default: read from the environment) describe."""
    settings = settings or load_storage_settings()
    build = BACKENDS.get(settings.backend.strip().lower())
    if build is None:
        raise InvalidInput(f"LORAMILL_STORAGE={settings.backend!r} is not supported; use one of: "
                           f"{', '.join(BACKENDS)}", code="invalid_setting", field="LORAMILL_STORAGE")
    return build(settings)


__all__ = ["BACKENDS", "Storage", "StorageSettings", "load_storage_settings", "make_storage"]
