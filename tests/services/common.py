"""Helpers shared by the service fixtures: free ports, waiting for a port, and the skip-or-fail rule."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
    """Block until something accepts TCP connections on ``host:port``, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def service_unavailable(what: str, hint: str) -> None:
    """Skip when a service can't be started locally; under ``make test`` (LORAMILL_REQUIRE_SERVICES=1) fail instead."""
    message = f"{what} is not available: {hint}"
    if os.environ.get("LORAMILL_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (make test requires every service)")
    pytest.skip(message)


def require_binary(name: str, hint: str) -> str:
    """Path of ``name`` on PATH, or skip/fail with ``hint``."""
    path = shutil.which(name)
    if path is None:
        service_unavailable(name, hint)
    assert path is not None
    return path
