"""S3 storage against moto's server over HTTP: presigned URLs, error translation, no leaked secrets."""

from __future__ import annotations

import logging
import urllib.request

import pytest

from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.s3 import S3Storage, endpoint_url
from loramill.errors import InvalidInput, LoramillError, TransientError
from tests.services.common import free_port
from tests.services.s3 import S3_TEST_SECRET_KEY


def test_fetch_presigned_url_over_http(s3_storage: Storage) -> None:
    s3_storage.put_bytes("users/u/generations/t/0.png", b"png bytes", content_type="image/png")

    url = s3_storage.url("users/u/generations/t/0.png", expires_in=60)

    assert url is not None and "X-Amz-Expires=60" in url and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"png bytes"
        assert response.headers["Content-Type"] == "image/png"


def test_presigned_url_uses_public_endpoint(s3_env: dict[str, str]) -> None:
    storage = S3Storage("b", endpoint=s3_env["S3_ENDPOINT"], access_key="a", secret_key="s", use_ssl=False,
                        public_endpoint="https://cdn.example.com")

    assert (storage.url("users/u/x.png") or "").startswith("https://cdn.example.com/b/users/u/x.png?")


def test_refuse_presigned_url_longer_than_a_week(s3_storage: Storage) -> None:
    with pytest.raises(InvalidInput, match="expiry"):
        s3_storage.url("users/u/x.png", expires_in=8 * 24 * 3600)


def test_unreachable_endpoint_raises_transient_error_without_secret(caplog: pytest.LogCaptureFixture) -> None:
    storage = S3Storage("b", endpoint=f"127.0.0.1:{free_port()}", access_key="a", secret_key=S3_TEST_SECRET_KEY,
                        use_ssl=False)

    with caplog.at_level(logging.DEBUG), pytest.raises(TransientError) as caught:
        storage.put_bytes("users/u/x.png", b"x")

    assert caught.value.retryable and "127.0.0.1" in caught.value.message
    assert S3_TEST_SECRET_KEY not in caught.value.message
    assert S3_TEST_SECRET_KEY not in caplog.text
    assert S3_TEST_SECRET_KEY not in repr(storage)


def test_missing_bucket_raises_configuration_error(s3_env: dict[str, str]) -> None:
    storage = S3Storage("no-such-bucket-here", endpoint=s3_env["S3_ENDPOINT"], access_key="a",
                        secret_key=S3_TEST_SECRET_KEY, use_ssl=False)

    with pytest.raises(LoramillError) as caught:
        storage.put_bytes("users/u/x.png", b"x")

    assert caught.value.code == "storage_misconfigured" and "S3_BUCKET" in caught.value.message
    assert not caught.value.retryable


def test_refuse_empty_bucket_name() -> None:
    with pytest.raises(InvalidInput, match="S3_BUCKET"):
        S3Storage("")


@pytest.mark.parametrize(("endpoint", "ssl", "url"), [
    ("minio:9000", False, "http://minio:9000"), ("minio:9000", True, "https://minio:9000"),
    ("http://127.0.0.1:9000", True, "http://127.0.0.1:9000"), ("", True, None), (None, False, None),
])
def test_build_endpoint_url_from_selfix_variables(endpoint: str | None, ssl: bool, url: str | None) -> None:
    assert endpoint_url(endpoint, ssl) == url
