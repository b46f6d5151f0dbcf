"""The bot's world in tests: a Bot API stand-in, a real SQLite job store, local storage, the SQL broker,
and the real worker on the tiny SD 1.5 model in a thread.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.gateway.bot.app import run_bot
from loramill.gateway.bot.settings import BotSettings
from tests.gateway.bot.standin import BotApiStandIn

TOKEN = "123456789:AAFakeTokenForTestsOnly-abcdefghijklmn"


@dataclass
class Services:
    """What the bot and the worker share: the job store, storage and the queue."""

    store: JobStore
    storage: LocalStorage
    broker: SqlBroker
    work_dir: Path


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    broker = SqlBroker(store, lease_seconds=30)
    yield Services(store, LocalStorage(tmp_path / "storage"), broker, tmp_path / "work")
    broker.close()
    store.close()


def bot_settings(api_url: str, **overrides: Any) -> BotSettings:
    """Settings for a fast test bot: tiny pictures, a short album wait, quick polls."""
    values: dict[str, Any] = {
        "token": TOKEN, "api_url": api_url, "per_chat_interval": 0.2, "album_wait": 0.4, "poll_interval": 0.1,
        "polling_timeout": 1, "steps": 2, "width": 64, "height": 64, "train_max_steps": 2, **overrides}
    return BotSettings(**values)


@asynccontextmanager
async def running_bot(services: Services, api: BotApiStandIn, **overrides: Any) -> AsyncIterator[BotSettings]:
    """The real bot, long polling the stand-in, until the block ends."""
    settings = bot_settings(f"http://127.0.0.1:{api.port}", **overrides)
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(settings, services.store, services.storage, services.broker, stop_event=stop))
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def stand_in() -> AsyncIterator[BotApiStandIn]:
    api = BotApiStandIn(TOKEN)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture(scope="session")
def resident_models() -> Any:
    """Base models stay loaded across tests, as in a long-running worker."""
    from loramill.jobs.handlers.models import ResidentModels

    return ResidentModels(lora_cache_size=2)


@pytest.fixture
def worker(services: Services, tiny_sd15: Path, resident_models: Any) -> Iterator[Any]:
    """A function that starts the real worker (tiny SD 1.5, 64 px, 2 steps) in a thread; stopped at teardown."""
    from loramill.jobs.settings import load_worker_settings
    from loramill.jobs.worker import Worker

    started: list[tuple[Worker, threading.Thread]] = []

    def start() -> Worker:
        settings = load_worker_settings(models=f"sd15={tiny_sd15}", base_model="sd15", work_dir=services.work_dir,
                                        default_resolution=64, default_max_steps=2, checkpoint_every=0,
                                        receive_timeout=0.2, progress_interval=0.2, handback_seconds=0)
        w = Worker(settings, services.broker, services.store, services.storage, models=resident_models)
        thread = threading.Thread(target=w.run, name="test-worker", daemon=True)
        thread.start()
        started.append((w, thread))
        return w

    yield start
    for w, thread in started:
        w.stop()
        thread.join(60)


def face_photos(count: int) -> list[bytes]:
    """``count`` different JPEG photos of one face (scikit-image's astronaut, cropped, mirrored, recoloured)."""
    from skimage import data

    base = Image.fromarray(data.astronaut()).convert("RGB")
    photos = []
    for i in range(count):
        image = base.crop((10 * i, 5 * i, 400 + 10 * i, 420 + 5 * i))
        if i % 2:
            image = ImageOps.mirror(image)
        # A coloured band of its own keeps each photo from being taken for a near duplicate of another.
        image.paste(((50 * i) % 255, 100, (255 - 40 * i) % 255), (0, image.height - 60 - 10 * i, image.width,
                                                                  image.height))
        buffer = io.BytesIO()
        image.resize((320, 336 - 8 * i)).save(buffer, "JPEG", quality=85)
        photos.append(buffer.getvalue())
    return photos


def decoded(data: bytes | None) -> Image.Image:
    """The picture in ``data`` (fails the test if it is not one)."""
    assert data, "no file was uploaded"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_bytes() -> bytes:
    """A small real PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()
