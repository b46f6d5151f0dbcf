"""``/healthz`` and ``/metrics`` of a worker on a small HTTP port (``LORAMILL_WORKER_HTTP_PORT``; 0 = off).

A standard-library server in a daemon thread: the worker's main thread is busy running the engine,
and an orchestrator's liveness probe must still get an answer while a two-hour training runs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loramill import metrics
from loramill.errors import InvalidInput

log = logging.getLogger(__name__)


class HealthServer:
    """Serves ``/healthz`` (200 while running, 503 once stopping) and ``/metrics`` (Prometheus text)."""

    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.split("?")[0] == "/metrics":
                    body, content_type = metrics.render()
                    self._send(200, body, content_type)
                elif self.path.split("?")[0] in ("/healthz", "/health"):
                    state = outer._status()
                    code = 200 if state.get("status") == "ok" else 503
                    self._send(code, json.dumps(state).encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not found; try /healthz or /metrics"}', "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                pass  # probes every few seconds would drown the job logs

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise InvalidInput(f"LORAMILL_WORKER_HTTP_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
                               "pick a free port or 0 to turn the health port off", code="invalid_setting",
                               field="LORAMILL_WORKER_HTTP_PORT") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loramill-health", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful when 0 was asked for in tests)."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health and metrics on :%d (/healthz, /metrics)", self.port)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever() that must have started
            self._server.shutdown()
        self._server.server_close()
