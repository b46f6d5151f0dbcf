"""S3-compatible storage (AWS S3, MinIO, R2, GCS interop) through boto3, with presigned GET URLs.

boto and connection errors are translated here, at the edge: a missing object is ``NotFound``, a
throttled, failing or unreachable service is ``TransientError`` (retryable), bad credentials or a
missing bucket are configuration errors. The secret key never appears in a message or a log line.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import SecretStr

from loramill.adapters.storage.base import Storage
from loramill.domain.keys import validate_key
from loramill.errors import InvalidInput, LoramillError, NotFound, TransientError

_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_RETRY = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "ServiceUnavailable",
          "InternalError", "RequestTimeTooSkewed", "503", "500"}
MAX_URL_EXPIRY = 7 * 24 * 3600  # S3 refuses presigned URLs valid for longer
_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def endpoint_url(endpoint: str | None, use_ssl: bool) -> str | None:
    """Selfix writes ``S3_ENDPOINT=minio:9000``; boto wants a URL, so the scheme follows ``S3_USE_SSL``."""
    if not endpoint:
        return None
    if "://" in endpoint:
        return endpoint
    return f"{'https' if use_ssl else 'http'}://{endpoint}"


class S3Storage(Storage):
    """Objects in one bucket; keys are the object keys (layout: ``loramill.domain.keys``)."""

    name = "s3"

    def __init__(self, bucket: str, *, endpoint: str | None = None, access_key: str | None = None,
                 secret_key: str | SecretStr | None = None, region: str = "us-east-1", use_ssl: bool = True,
                 public_endpoint: str | None = None, url_expires: int = 3600) -> None:
        if not bucket:
            raise InvalidInput("S3_BUCKET is not set; name the bucket that holds loramill's objects",
                               code="invalid_setting", field="S3_BUCKET")
        self.bucket = bucket
        self.url_expires = url_expires
        secret = secret_key.get_secret_value() if isinstance(secret_key, SecretStr) else secret_key
        # Kept only to scrub it out of any message a library might build around it.
        self._secret = secret or None
        self._client = self._make_client(endpoint_url(endpoint, use_ssl), access_key, secret, region)
        self._presigner = (self._make_client(endpoint_url(public_endpoint, use_ssl), access_key, secret, region)
                           if public_endpoint else self._client)

    @staticmethod
    def _make_client(url: str | None, access_key: str | None, secret: str | None, region: str) -> Any:
        config = Config(signature_version="s3v4", region_name=region, connect_timeout=5, read_timeout=60,
                        retries={"max_attempts": 3, "mode": "standard"},
                        # MinIO and most self-hosted stores only speak path-style addressing.
                        s3={"addressing_style": "path" if url else "auto"})
        # One boto session per process: building a client from a fresh session reloads the service
        # model from disk (~0.2 s). Sessions are not thread-safe, hence the lock.
        global _session
        with _session_lock:
            if _session is None:
                _session = boto3.session.Session()
            return _session.client("s3", endpoint_url=url, aws_access_key_id=access_key,
                                   aws_secret_access_key=secret, config=config)

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint={self._client.meta.endpoint_url!r})"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for local setups and tests)."""
        try:
            with self._translate("head bucket", ""):
                self._client.head_bucket(Bucket=self.bucket)
        except LoramillError as exc:
            if exc.code not in ("not_found", "storage_misconfigured"):
                raise
            region = self._client.meta.region_name
            extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            with self._translate("create bucket", ""):
                self._client.create_bucket(Bucket=self.bucket, **extra)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Upload ``data`` as the object ``key``."""
        key = validate_key(key)
        extra = {"ContentType": content_type} if content_type else {}
        with self._translate("upload", key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Upload a file (multipart for large LoRAs and checkpoints)."""
        key = validate_key(key)
        extra = {"ExtraArgs": {"ContentType": content_type}} if content_type else {}
        with self._translate("upload", key):
            self._client.upload_file(str(path), self.bucket, key, **extra)

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ``NotFound`` if there is none."""
        key = validate_key(key)
        with self._translate("download", key):
            return bytes(self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def get_file(self, key: str, path: Path) -> Path:
        """Download to ``path``; a partial download never appears under ``path``."""
        key = validate_key(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            with self._translate("download", key):
                self._client.download_file(self.bucket, key, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        key = validate_key(key)
        try:
            with self._translate("look up", key):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove the object (no error if it is already gone)."""
        key = validate_key(key)
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def url(self, key: str, expires_in: int | None = None) -> str | None:
        """A presigned GET URL valid for ``expires_in`` seconds (default ``url_expires``)."""
        key = validate_key(key)
        expires = self.url_expires if expires_in is None else expires_in
        if not 1 <= expires <= MAX_URL_EXPIRY:
            raise InvalidInput(f"URL expiry must be 1..{MAX_URL_EXPIRY} seconds, not {expires}",
                               field="expires_in")
        with self._translate("presign", key):
            return str(self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires))

    def usage(self, prefix: str) -> int:
        """Bytes stored under ``prefix``, from the listing's sizes (nothing is downloaded)."""
        if prefix:
            validate_key(prefix.rstrip("/") or "/")
        total = 0
        with self._translate("list", prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                total += sum(int(item.get("Size", 0)) for item in page.get("Contents", []))
        return total

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted (S3 lists in key order)."""
        if prefix:
            validate_key(prefix.rstrip("/") or "/")
        keys: list[str] = []
        with self._translate("list", prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    @contextmanager
    def _translate(self, action: str, key: str) -> Iterator[None]:
        where = f"S3 {action} of {key!r} in bucket {self.bucket!r}" if key else f"S3 {action} {self.bucket!r}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _MISSING or status == 404 and code != "NoSuchBucket":
                raise NotFound(f"no object stored under {key!r}", field="key") from None
            if code == "NoSuchBucket":
                raise LoramillError(f"{where} failed: the bucket does not exist; create it or fix S3_BUCKET",
                                    code="storage_misconfigured") from None
            if code in _DENIED or status == 403:
                raise LoramillError(f"{where} was refused ({code}); check S3_ACCESS_KEY, S3_SECRET_KEY and "
                                    "the bucket policy", code="storage_access_denied") from None
            if code in _RETRY or status >= 500:
                raise TransientError(f"{where} failed: {code or status}, retry later") from None
            raise LoramillError(f"{where} failed: {code} {self._scrub(str(error.get('Message', '')))}",
                                code="storage_error") from None
        except NoCredentialsError:
            raise LoramillError("S3 credentials are missing; set S3_ACCESS_KEY and S3_SECRET_KEY",
                                code="storage_misconfigured") from None
        except S3UploadFailedError as exc:
            text = self._scrub(str(exc))
            if any(c in text for c in _DENIED | {"NoSuchBucket"}):
                raise LoramillError(f"{where} failed: {text}", code="storage_misconfigured") from None
            raise TransientError(f"{where} failed: {text}") from None
        except BotoCoreError as exc:
            # Unreachable endpoint, timeouts, dropped connections: the same call may work later.
            raise TransientError(f"{where} failed: {type(exc).__name__}: {self._scrub(str(exc))}") from None

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text
