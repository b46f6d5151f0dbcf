"""Tsuki's status updates never hold up the worker: ``observe`` only queues, a thread sends in order."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loramill.adapters.storage.local import LocalStorage
from loramill.jobs.callbacks import StatusCallback
from loramill.jobs.contracts import JobEvent
from loramill.jobs.retry import RetryPolicy
from loramill.jobs.tsuki import TsukiSettings


def test_observe_returns_while_gateway_hangs_and_updates_arrive_in_order(tmp_path: Path) -> None:
    release = threading.Event()
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - http.server's name
            release.wait(30)  # the gateway hangs until the test lets it answer
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    storage = LocalStorage(tmp_path)
    storage.put_bytes("users/tsuki/generations/r-1/0.png", b"\x89PNG fake")
    settings = TsukiSettings(api_gateway_url=f"http://127.0.0.1:{server.server_port}",
                             public_url="https://cdn.example/items")
    callback = StatusCallback(settings, storage, RetryPolicy(3, 0.01, 0.01))
    try:
        callback.watch("r-1")
        callback.observe(JobEvent(task_id="r-1", user_id="tsuki", status="processing"))
        callback.observe(JobEvent(task_id="r-1", user_id="tsuki", status="completed",
                                  image_paths=["users/tsuki/generations/r-1/0.png"]))
        callback.observe(JobEvent(task_id="other", user_id="u", status="completed"))  # not watched: ignored

        assert received == [] and callback.sent == 0  # both calls returned with the gateway still silent
        release.set()
        deadline = time.monotonic() + 30
        while callback.sent < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        callback.close()
        server.shutdown()

    assert received == [("/update_db/r-1", {"status": "processing"}),
                        ("/update_db/r-1", {"status": "Completed",
                                            "image_url": "https://cdn.example/items/generated/r-1.png"})]
    assert storage.get_bytes("generated/r-1.png") == b"\x89PNG fake"
