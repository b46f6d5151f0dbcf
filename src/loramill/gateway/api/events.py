"""Server-sent events of one job, replayed from the store and followed until the job ends.

Each event's SSE ``id`` is its store id, so a client that reconnects with ``Last-Event-ID`` gets exactly
the events it missed. Reading the store (not the broker) means any number of API replicas can serve
the same stream, and a stream opened after the job finished still tells the whole story.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from loramill.domain.ports import JobRepository
from loramill.domain.records import EventRecord
from loramill.domain.status import JobStatus

RECONNECT_MS = 2000


def sse_kind(body: dict[str, Any]) -> str:
    """``progress`` for a processing event that carries progress, else ``status``."""
    return "progress" if body.get("status") == "processing" and body.get("progress") else "status"


def format_event(event: EventRecord) -> bytes:
    """One event in the text/event-stream format."""
    data = json.dumps(event.body, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.id}\nevent: {sse_kind(event.body)}\ndata: {data}\n\n".encode()


def parse_last_event_id(value: str | None) -> int:
    """The id to resume after; anything unreadable means "from the start"."""
    try:
        return max(0, int((value or "0").strip()))
    except ValueError:
        return 0


async def stream_job_events(store: JobRepository, job_id: str, after_id: int, *, poll_seconds: float,
                            keepalive_seconds: float,
                            disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
    """Yield the job's events after ``after_id`` as they are stored; stop after a terminal one."""
    # 1. Tell the browser how soon to reconnect if the connection drops
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    quiet_since = time.monotonic()
    while True:
        # 2. Everything new since the last event sent
        batch = await run_in_threadpool(store.list_events, job_id, after_id)
        for event in batch:
            after_id = event.id
            yield format_event(event)
            if JobStatus(event.body.get("status", "queued")).terminal:
                return
        if batch:
            quiet_since = time.monotonic()
            continue  # there may be more than one batch waiting
        # 3. A job that ended without a terminal event after the cursor has nothing more to say
        #    (read once more: the terminal event may have landed between the two reads)
        job = await run_in_threadpool(store.get_job, job_id)
        if job is None or job.status.terminal:
            for event in await run_in_threadpool(store.list_events, job_id, after_id):
                yield format_event(event)
            return
        # 4. Keep proxies from closing a quiet stream, then wait
        if time.monotonic() - quiet_since >= keepalive_seconds:
            yield b": keepalive\n\n"
            quiet_since = time.monotonic()
        if await disconnected():
            return
        await asyncio.sleep(poll_seconds)
