"""Shared pieces of the reliability tests: an instant engine, a restartable TCP front, result accounting.

The instant engine replaces only the handler (``handler_for``) inside a test: the worker's claim,
store, publish and acknowledge steps — where jobs get lost or doubled — run for real.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loramill.domain.status import JobStatus
from loramill.jobs.contracts import JobEvent, Metrics
from loramill.jobs.handlers.context import JobContext


@dataclass
class InstantEngine:
    """A handler that finishes every job at once (after ``delay`` s), counting runs per taskId."""

    delay: float = 0.0
    runs: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, ctx: JobContext) -> JobEvent:
        with self.lock:
            self.runs[ctx.job.task_id] += 1
        if self.delay:
            time.sleep(self.delay)
        job = ctx.job
        if job.kind == "train":
            return JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.COMPLETED,
                            model_path=f"users/{job.user_id}/models/{job.task_id}.safetensors",
                            metrics=Metrics(training_time=0, final_loss=0.01))
        return JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.COMPLETED,
                        image_paths=[f"users/{job.user_id}/generations/{job.task_id}/0.png"])


@contextmanager
def instant_engine(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> Iterator[InstantEngine]:
    """Patch the worker's handler lookup with an ``InstantEngine`` for the duration of the block."""
    engine = InstantEngine(delay=delay)
    monkeypatch.setattr("loramill.jobs.worker.handler_for", lambda kind: engine)
    yield engine


def tiny_job(task_id: str, user_id: str = "load-user") -> bytes:
    """A valid generation job small enough that only the queue path costs anything."""
    return json.dumps({"taskId": task_id, "userId": user_id, "prompt": "sks, a portrait", "width": 64,
                       "height": 64, "steps": 1}).encode()


@dataclass
class Tally:
    """Events per taskId, as a client reading the output topic / queue sees them."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, bodies: list[bytes]) -> None:
        for body in bodies:
            event = json.loads(body)
            self.events[event["taskId"]].append(event)

    def completed(self) -> dict[str, list[dict[str, Any]]]:
        return {t: [e for e in es if e["status"] == "completed"] for t, es in self.events.items()
                if any(e["status"] == "completed" for e in es)}

    def summary(self, tasks: list[str]) -> dict[str, int]:
        """lost (no completed event), duplicate events, and tasks with two *different* results."""
        done = self.completed()
        lost = [t for t in tasks if t not in done]
        extra = sum(len(done[t]) - 1 for t in done)
        differing = sum(1 for t in done if len({json.dumps(e, sort_keys=True) for e in done[t]}) > 1)
        failed = sum(1 for es in self.events.values() if any(e["status"] == "failed" for e in es))
        return {"jobs": len(tasks), "completed": len(done), "lost": len(lost), "duplicate_events": extra,
                "differing_results": differing, "failed": failed}

    def wait(self, read: Callable[[float], list[bytes]], tasks: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(tasks)
        while time.monotonic() < deadline and not wanted <= set(self.completed()):
            self.add(read(0.5))


class TcpFront:
    """A TCP forwarder on a fixed port in front of a real server; ``stop()`` makes the service vanish.

    moto keeps its objects in memory, so stopping moto itself would also lose the job's inputs — a
    real S3 outage does not. Stopping this front gives clients the same "connection refused" and
    cut connections as a stopped server while the objects behind it survive.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port = int(probe.getsockname()[1])
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (the server is gone)."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
            except OSError:
                pass
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


FIGURES = Path(__file__).parent / "figures"


def record_figure(name: str, figures: dict[str, Any]) -> None:
    """Print a figure line; with ``LORAMILL_RECORD_FIGURES=1`` (``make soak`` sets it) also keep it in
    ``tests/reliability/figures/<name>.json``, the snapshot docs/reliability.md quotes."""
    print(f"\n[reliability] {name}: " + json.dumps(figures, sort_keys=True))
    if os.environ.get("LORAMILL_RECORD_FIGURES") != "1":
        return
    FIGURES.mkdir(exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
