"""S3 for tests: moto's S3 server in its own process over HTTP, started once per session, with a bucket."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.services.common import free_port, service_unavailable, wait_for_port

S3_TEST_BUCKET = "loramill-test"
S3_TEST_REGION = "us-east-1"
S3_TEST_ACCESS_KEY = "loramill-test-access"
# Deliberately distinctive, so tests can assert it never shows up in a message or a log line.
S3_TEST_SECRET_KEY = "loramill-test-SECRET-0f9c2e"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a running moto S3 server holding the bucket ``S3_TEST_BUCKET``."""
    port = free_port()
    try:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        service_unavailable("moto S3 server", f"could not start it ({exc}); pip install 'moto[server]'")
    try:
        try:
            wait_for_port(port, timeout=30)
        except TimeoutError:
            service_unavailable("moto S3 server", "it did not listen within 30 s; pip install 'moto[server]'")
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=S3_TEST_REGION, aws_access_key_id=S3_TEST_ACCESS_KEY,
            aws_secret_access_key=S3_TEST_SECRET_KEY).create_bucket(Bucket=S3_TEST_BUCKET)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """Selfix's ``S3_*`` variables pointing at the test server (``host:port`` form, SSL off)."""
    return {
        "S3_ENDPOINT": s3_endpoint.removeprefix("http://"),
        "S3_ACCESS_KEY": S3_TEST_ACCESS_KEY,
        "S3_SECRET_KEY": S3_TEST_SECRET_KEY,
        "S3_REGION": S3_TEST_REGION,
        "S3_BUCKET": S3_TEST_BUCKET,
        "S3_USE_SSL": "false",
    }
