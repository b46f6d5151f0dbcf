"""``loramill serve``: the HTTP API and web page, N workers and (with a token) the Telegram bot, in one process.

On the embedded default that is the whole product on one machine: SQLite, the SQL queue and a folder
under ``LORAMILL_HOME``. The same function runs against PostgreSQL, Kafka or RabbitMQ and S3 when the
environment says so (docs/configuration.md); past one machine, run ``loramill serve`` with
``LORAMILL_WORKERS=0`` for the API and ``loramill worker`` on each GPU machine.

Shutdown (SIGINT / SIGTERM, handled by uvicorn): the API stops accepting, then workers stop at their
next step (a training checkpoints and its job goes back to the queue), then the bot, then connections.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.base import Storage
from loramill.adapters.store import JobStore
from loramill.config import Config, load_config, open_broker, open_storage, open_store
from loramill.domain.ports import Store
from loramill.gateway.settings import GatewaySettings

log = logging.getLogger("loramill.serve")
WORKER_JOIN_SECONDS = 120.0  # a training reaches its next step and uploads a checkpoint well within this


@dataclass
class WorkerThread:
    """One worker with its own broker connection (Kafka and AMQP consumers cannot be shared)."""

    worker: Any
    broker: Broker
    thread: threading.Thread


class BotThread:
    """The Telegram bot on an event loop of its own, stopped from the main thread."""

    def __init__(self, run_bot: Any, *args: Any, **kwargs: Any) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await run_bot(*args, stop_event=self._stop, **kwargs)

        def run() -> None:
            try:
                asyncio.run(main())
            except Exception:  # the API and workers keep serving; the log says why the bot stopped
                log.exception("Telegram bot stopped with an error")
            finally:
                self._ready.set()

        self.thread = threading.Thread(target=run, name="telegram-bot", daemon=True)

    def start(self) -> BotThread:
        self.thread.start()
        self._ready.wait(timeout=10)
        return self

    def shutdown(self) -> None:
        """Set the bot's stop event from this thread and wait for it to finish its sends."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=30)


def start_workers(count: int, config: Config, store: JobStore, storage: Storage) -> list[WorkerThread]:
    """``count`` workers in daemon threads, each consuming from its own broker connection.

    Each worker's default base model starts loading at once in a thread of its own (as in ``loramill
    worker``), so that load runs while the broker connects and the API starts, not after the first job.
    """
    from loramill.jobs.handlers.models import ResidentModels, preload_default
    from loramill.jobs.worker import Worker

    started = []
    for n in range(count):
        models = ResidentModels(lora_cache_size=config.worker.lora_cache_size)
        preload_default(models, config.worker)
        broker = open_broker(config, store)
        worker = Worker(config.worker, broker, store, storage, models=models)
        thread = threading.Thread(target=worker.run, name=f"worker-{n}", daemon=True)
        thread.start()
        started.append(WorkerThread(worker, broker, thread))
    return started


def stop_workers(workers: list[WorkerThread]) -> None:
    """Ask every worker to stop, then wait for each (a running training saves a checkpoint first)."""
    for w in workers:
        w.worker.stop()
    for w in workers:
        w.thread.join(timeout=WORKER_JOIN_SECONDS)
        if w.thread.is_alive():
            log.warning("%s did not stop in %.0fs; its job will be redelivered", w.thread.name, WORKER_JOIN_SECONDS)
        w.worker.close()
        w.broker.close()


def bot_available() -> bool:
    """A token is configured and the bot module is installed."""
    return bool(os.environ.get("LORAMILL_TELEGRAM_TOKEN")) and \
        importlib.util.find_spec("loramill.gateway.bot.app") is not None


def start_bot(store: Store, storage: Storage, broker: Broker, gateway_settings: GatewaySettings) -> BotThread:
    """Run ``loramill.gateway.bot.app.run_bot`` in a thread with its own event loop."""
    from loramill.gateway.bot.app import run_bot
    from loramill.gateway.bot.settings import load_bot_settings

    return BotThread(run_bot, load_bot_settings(), store, storage, broker, gateway_settings=gateway_settings).start()


def serve(settings: GatewaySettings, config: Config | None = None) -> None:
    """Run everything until SIGINT / SIGTERM; see the module docstring."""
    import uvicorn

    from loramill.gateway.api.main import create_app

    # 1. Settings of every part; local files are served by the API, so their URLs point at it
    config = config or load_config()
    config.log_choices()
    if settings.workers:
        config.require_worker_ready()
    public_url = (settings.public_url or f"http://{_display_host(settings.host)}:{settings.port}").rstrip("/")
    if config.storage.backend == "local" and not config.storage.base_url:
        config.storage.base_url = f"{public_url}/v1/files/"

    # 2. The store, storage and the API's broker connection
    store = open_store(config)
    storage = open_storage(config)
    broker = open_broker(config, store)

    # 3. Workers and bot beside the API
    workers = start_workers(settings.workers, config, store, storage)
    bot = start_bot(store, storage, broker, settings) if bot_available() else None
    log.info("serving on %s (%d worker(s), broker %s, storage %s, database %s%s)", public_url, len(workers),
             broker.name, storage.name, store.dialect, ", Telegram bot" if bot else "")

    # 4. The API until a signal; then everything else, in order
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store, storage, broker), host=settings.host,
                                           port=settings.port, log_config=None, access_log=False,
                                           # open event streams would hold shutdown forever; clients resume
                                           # them elsewhere with Last-Event-ID
                                           timeout_graceful_shutdown=settings.shutdown_grace_seconds))
    _keep_signals_for_cleanup()
    try:
        server.run()
    finally:
        log.info("stopping: workers first (a running training saves a checkpoint)")
        stop_workers(workers)
        if bot is not None:
            bot.shutdown()
        broker.close()
        store.close()
        log.info("stopped")


def _keep_signals_for_cleanup() -> None:
    """Uvicorn re-raises the signal that stopped it once it is done; with the default handlers that
    would kill the process before the workers checkpoint. A no-op handler lets the cleanup run."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: log.info("received %s", signal.Signals(signum).name))


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
