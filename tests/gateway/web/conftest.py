"""The whole service on a real port: API + web page (uvicorn) and the real worker, on SQLite and a folder."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from loramill.adapters.broker.sql import SqlBroker
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.gateway.api.conftest import Api, make_api
from tests.services.common import free_port, wait_for_port


@dataclass
class LiveService:
    api: Api
    url: str


@pytest.fixture
def live_service(tmp_path: Path, tiny_sd15: Path) -> Iterator[LiveService]:
    api = make_api(tmp_path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.client.app, host="127.0.0.1", port=port, log_level="warning"))
    web = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    web.start()
    settings = WorkerSettings(base_model=str(tiny_sd15), work_dir=tmp_path / "work", progress_interval=0.1,
                              receive_timeout=0.1, log_format="text")
    broker = SqlBroker(api.store)
    worker = Worker(settings, broker, api.store, api.storage)
    working = threading.Thread(target=worker.run, name="worker", daemon=True)
    working.start()
    wait_for_port(port, timeout=30)
    yield LiveService(api, f"http://127.0.0.1:{port}")
    worker.stop()
    server.should_exit = True
    working.join(timeout=30)
    web.join(timeout=10)
    broker.close()
    api.broker.close()
    api.store.close()
