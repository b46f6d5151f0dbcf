"""A private RabbitMQ node for the tests: Debian's ``rabbitmq-server`` on free ports, data in a temp dir.

The node is started once per session (it takes ~10 s) and stopped at the end. It runs as the
current user straight from RabbitMQ's script directory (not through Debian's wrapper, which
switches to the ``rabbitmq`` user) with HOME in the temp dir, so its Erlang cookie, data and logs
are private and ``rabbitmqctl`` run the same way can talk to it. ``restart()`` keeps node name and
data directory: durable queues and persistent messages survive it, as on a real server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.common import free_port, service_unavailable, wait_for_port

SCRIPT_DIRS = ["/usr/lib/rabbitmq/bin"]  # Debian/Ubuntu; elsewhere the scripts on PATH are the real ones
HINT = "run `bash scripts/install-services.sh` (apt-get install rabbitmq-server)"


def rabbitmq_scripts() -> Path:
    for folder in SCRIPT_DIRS:
        if Path(folder, "rabbitmq-server").exists():
            return Path(folder)
    found = shutil.which("rabbitmq-server")
    if found is None:
        service_unavailable("rabbitmq-server", HINT)
    return Path(str(found)).parent


class RabbitMQNode:
    """One private RabbitMQ node: ``start``, ``stop``, ``restart``; ``url`` stays the same throughout."""

    def __init__(self, scripts: Path, base: Path) -> None:
        self.scripts = scripts
        self.base = base
        self.port = free_port()
        self.node = f"loramill-{uuid.uuid4().hex[:8]}@localhost"
        (base / "enabled_plugins").write_text("[].\n")  # no management plugin: no fixed ports taken
        (base / "rabbitmq.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def start(self, timeout: float = 90) -> None:
        with (self.base / "server.out").open("ab") as out:
            self._process = subprocess.Popen(
                [str(self.scripts / "rabbitmq-server")], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        # await_startup fails at once while the node has not registered with epmd yet: retry.
        while True:
            if self._process.poll() is not None:
                self._fail("the node exited during startup")
            done = self.ctl("await_startup", "--timeout", "30", timeout=40)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                self._fail(f"await_startup: {done.stderr[-500:]}")
            time.sleep(0.5)
        wait_for_port(self.port, timeout=30)

    def stop(self) -> None:
        if self._process is None:
            return
        self.ctl("stop", timeout=60)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, 9)
            self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _fail(self, why: str) -> None:
        log = (self.base / "server.out").read_text(errors="replace")[-2000:]
        self.stop()
        service_unavailable("rabbitmq-server", f"{why}\n{log}")


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """The session's private RabbitMQ node (for tests that restart it; others take ``rabbitmq_url``)."""
    node = RabbitMQNode(rabbitmq_scripts(), tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_node: RabbitMQNode) -> str:
    """``amqp://`` URL of the session's private RabbitMQ node."""
    return rabbitmq_node.url
