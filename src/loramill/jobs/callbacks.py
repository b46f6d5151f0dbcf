"""Status updates over HTTP for clients that learn a job's fate from a callback, not from a queue (Tsuki).

``PUT {API_GATEWAY_URL}/update_db/{request_id}`` with ``{"status": "processing"}``, then ``{"status":
"Completed", "image_url": ...}`` or ``{"status": "failed"}``. The worker never waits for it: updates go
into a queue that one thread sends in order, each retried with backoff; an update that still fails is
logged and dropped (the job's outcome is in the job store either way). Before the ``Completed`` update
the image is copied to ``generated/{request_id}.png``, so the URL sent points at something.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx

from loramill.adapters.storage.base import Storage
from loramill.domain.keys import tsuki_image_key
from loramill.domain.status import JobStatus
from loramill.jobs.contracts import JobEvent
from loramill.jobs.retry import RetryPolicy
from loramill.jobs.tsuki import TsukiSettings

log = logging.getLogger(__name__)

STATUS_WORDS = {JobStatus.PROCESSING: "processing", JobStatus.COMPLETED: "Completed",
                JobStatus.FAILED: "failed", JobStatus.CANCELED: "failed"}


class StatusCallback:
    """Sends the status of watched tasks to ``{API_GATEWAY_URL}/update_db/{request_id}``, off the worker's thread."""

    def __init__(self, settings: TsukiSettings, storage: Storage, policy: RetryPolicy | None = None) -> None:
        if not settings.api_gateway_url:
            raise ValueError("StatusCallback needs API_GATEWAY_URL")
        self.base = settings.api_gateway_url.rstrip("/")
        self.settings = settings
        self.storage = storage
        self.policy = policy or RetryPolicy(settings.callback_attempts, 0.5, 30.0)
        self._watched: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, JobEvent] | None] = queue.Queue()
        self._client = httpx.Client(timeout=settings.callback_timeout_seconds)
        self._thread = threading.Thread(target=self._send_all, name="status-callback", daemon=True)
        self._thread.start()
        self.sent = 0  # updates the gateway accepted, for tests and metrics

    def watch(self, task_id: str) -> None:
        """Report this task's events (it came in the callback client's format)."""
        with self._lock:
            self._watched.add(task_id)

    def observe(self, event: JobEvent) -> None:
        """Queue the update ``event`` means, if its task is watched; never blocks, never raises."""
        status = JobStatus(event.status)
        if status is JobStatus.PROCESSING and event.progress is not None:
            return  # the client knows one "processing"; step counts are not its business
        with self._lock:
            if event.task_id not in self._watched:
                return
            if status.terminal:
                self._watched.discard(event.task_id)
        self._queue.put((event.task_id, event))

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (waiting up to ``timeout`` s), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._client.close()

    def _send_all(self) -> None:
        while (item := self._queue.get()) is not None:
            task_id, event = item
            try:
                self._send(task_id, self._body(task_id, event))
            except Exception:  # noqa: BLE001 - one update must never stop the ones after it
                log.exception("status update of %s not sent", task_id, extra={"task_id": task_id})

    def _body(self, task_id: str, event: JobEvent) -> dict[str, Any]:
        status = JobStatus(event.status)
        body: dict[str, Any] = {"status": STATUS_WORDS.get(status, str(status))}
        if status is JobStatus.COMPLETED:
            body["image_url"] = self._publish_image(task_id, event)
            if body["image_url"] is None:
                body = {"status": "failed"}
        return body

    def _publish_image(self, task_id: str, event: JobEvent) -> str | None:
        """Copy the job's first image to ``generated/{request_id}.png``; its public URL."""
        if not event.image_paths:
            log.error("completed job has no image to publish", extra={"task_id": task_id})
            return None
        key = tsuki_image_key(task_id)
        self._retry(lambda: self.storage.put_bytes(key, self.storage.get_bytes(event.image_paths[0]), "image/png"))
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/") + "/" + key
        return self.storage.url(key)

    def _send(self, task_id: str, body: dict[str, Any]) -> None:
        url = f"{self.base}/update_db/{task_id}"

        def put() -> None:
            response = self._client.put(url, json=body)
            if response.status_code >= 500 or response.status_code == 429:
                raise httpx.HTTPStatusError(f"{response.status_code}", request=response.request, response=response)
            if response.status_code >= 400:  # the gateway refuses it: trying again changes nothing
                log.error("status update %s refused: HTTP %d %s", body["status"], response.status_code,
                          response.text[:200], extra={"task_id": task_id})
                return
            self.sent += 1
            log.info("status update %s sent", body["status"], extra={"task_id": task_id})

        self._retry(put)

    def _retry(self, fn: Any) -> None:
        for attempt in range(1, self.policy.attempts + 1):
            try:
                fn()
                return
            except Exception as exc:  # noqa: BLE001 - transport errors, 5xx, storage hiccups: all worth a retry
                if attempt == self.policy.attempts:
                    raise
                wait = self.policy.delay(attempt)
                log.warning("status update failed (%s); try %d of %d in %.1fs", type(exc).__name__, attempt + 1,
                            self.policy.attempts, wait)
                threading.Event().wait(wait)
