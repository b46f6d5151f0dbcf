"""A real gateway over a real SQLite store, local storage and the SQL queue, with three users' keys."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loramill.adapters.broker.base import Broker
from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.gateway.api.main import create_app
from loramill.gateway.settings import GatewaySettings
from tests.services.models import draw_subject


@dataclass
class Api:
    """The app's parts and a client per user."""

    store: JobStore
    storage: Storage
    broker: Broker
    settings: GatewaySettings
    client: TestClient
    keys: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}"}


def png_bytes(index: int = 0, size: tuple[int, int] = (96, 80)) -> bytes:
    buffer = io.BytesIO()
    draw_subject(index, size).save(buffer, format="PNG")
    return buffer.getvalue()


def make_api(tmp_path: Path, *, store: JobStore | None = None, storage: Storage | None = None,
             broker: Broker | None = None, **overrides: object) -> Api:
    """The app over the given parts; by default SQLite, a local folder and the SQL queue."""
    store = store or JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    storage = storage or LocalStorage(tmp_path / "storage")
    broker = broker or SqlBroker(store)
    settings = GatewaySettings(**{"sse_poll_seconds": 0.05, **overrides})  # type: ignore[arg-type]
    keys = {}
    for user in ("alice", "bob", "root"):
        store.create_user(user, user_id=user, is_admin=user == "root")
        keys[user] = store.create_api_key(user)[1]
    client = TestClient(create_app(settings, store, storage, broker))
    return Api(store, storage, broker, settings, client, keys)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = make_api(tmp_path)
    with made.client:
        yield made
    made.broker.close()
    made.store.close()


@pytest.fixture
def worker(api: Api, tiny_sd15: Path, tmp_path: Path) -> Iterator[object]:
    """The real worker, in a thread, on the API's store, storage and SQL queue, with the tiny SD 1.5."""
    import threading

    from loramill.jobs.settings import WorkerSettings
    from loramill.jobs.worker import Worker

    settings = WorkerSettings(base_model=str(tiny_sd15), work_dir=tmp_path / "work", progress_interval=0.05,
                              cancel_check_interval=0.05, receive_timeout=0.1, log_format="text")
    broker = SqlBroker(api.store)
    running = Worker(settings, broker, api.store, api.storage)
    thread = threading.Thread(target=running.run, name="worker", daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=30)
    broker.close()
