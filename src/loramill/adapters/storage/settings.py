"""Storage settings from the environment: ``LORAMILL_STORAGE*`` plus Selfix's ``S3_*`` names as they are."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from loramill.errors import InvalidInput


def _default_root() -> Path:
    return Path(os.environ.get("LORAMILL_HOME") or "~/.loramill").expanduser() / "storage"


class StorageSettings(BaseSettings):
    """Where artifacts live: a local folder (default) or an S3-compatible bucket."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    backend: str = Field(default="local", validation_alias="LORAMILL_STORAGE",
                         description="'local' (a folder) or 's3' (any S3-compatible store)")
    root: Path = Field(default_factory=_default_root, validation_alias="LORAMILL_STORAGE_ROOT",
                       description="folder of the local backend; default $LORAMILL_HOME/storage")
    base_url: str | None = Field(default=None, validation_alias="LORAMILL_STORAGE_BASE_URL",
                                 description="local backend: URL prefix the gateway serves files under")
    url_expires: int = Field(default=3600, ge=1, le=7 * 24 * 3600, validation_alias="LORAMILL_STORAGE_URL_EXPIRES",
                             description="lifetime in seconds of presigned GET URLs (S3 allows at most 7 days)")
    s3_endpoint: str | None = Field(default=None, validation_alias="S3_ENDPOINT",
                                    description="host:port or URL of the S3 service; empty for AWS")
    s3_public_endpoint: str | None = Field(default=None, validation_alias="LORAMILL_S3_PUBLIC_ENDPOINT",
                                           description="endpoint clients reach, if it differs (for presigned URLs)")
    s3_access_key: str | None = Field(default=None, validation_alias="S3_ACCESS_KEY")
    s3_secret_key: SecretStr | None = Field(default=None, validation_alias="S3_SECRET_KEY")
    s3_region: str = Field(default="us-east-1", validation_alias="S3_REGION")
    s3_bucket: str | None = Field(default=None, validation_alias="S3_BUCKET")
    s3_use_ssl: bool = Field(default=True, validation_alias="S3_USE_SSL")


def load_storage_settings() -> StorageSettings:
    """Read the settings from the environment; a bad value becomes ``InvalidInput`` naming the variable."""
    try:
        return StorageSettings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = str(first["loc"][0]) if first["loc"] else "storage settings"
        # The value is left out of the message: it may be a secret.
        raise InvalidInput(f"{name}: {first['msg']}", code="invalid_setting", field=name) from None
