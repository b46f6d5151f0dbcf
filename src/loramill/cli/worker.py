"""``loramill worker``: take training and generation jobs from the broker until SIGTERM.

Configured through the environment (``LORAMILL_*``, and Selfix's ``KAFKA_*`` / ``S3_*`` as they are);
flags override the worker's own settings. Logs are JSON lines on stderr with the task id on each.
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

log = logging.getLogger("loramill.worker")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run jobs from the queue (train, generate)", description=__doc__)
    p.add_argument("--jobs", help="job kinds to take, comma-separated (default: train,generate; "
                                  "env LORAMILL_WORKER_JOBS)")
    p.add_argument("--broker", choices=["sql", "kafka", "rabbitmq"], help="default: LORAMILL_BROKER or sql")
    p.add_argument("--http-port", type=int, help="port of /healthz and /metrics (0 = off; env "
                                                 "LORAMILL_WORKER_HTTP_PORT)")
    p.add_argument("--max-jobs", type=int, help="exit after this many deliveries (default: run until SIGTERM)")
    p.add_argument("--log-format", choices=["json", "text"], help="default: json (env LORAMILL_LOG_FORMAT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from loramill.jobs.settings import load_worker_settings
    from loramill.logs import configure_logging, register_environment_secrets

    # 1. Logging first, secrets registered with its redactor, before anything (alembic, librdkafka) logs
    register_environment_secrets(os.environ)
    overrides = dict(jobs=args.jobs, broker=args.broker, http_port=args.http_port, log_format=args.log_format)
    early = load_worker_settings(**overrides)
    configure_logging("DEBUG" if args.verbose else early.log_level, early.log_format)

    # 2. The default base model starts loading now, in a thread: importing torch and diffusers and
    #    loading it takes seconds, which then pass while the store opens and the broker connects
    from loramill.jobs.handlers.models import ResidentModels, preload_default

    models = ResidentModels(lora_cache_size=early.lora_cache_size)
    preload_default(models, early)

    from loramill.config import load_config, open_broker, open_storage, open_store
    from loramill.jobs.health import HealthServer
    from loramill.jobs.worker import Worker

    config = load_config(**overrides)
    settings = config.worker
    config.log_choices()
    config.require_worker_ready()

    # 3. Store, storage, broker
    store = open_store(config)
    storage = open_storage(config)
    broker = open_broker(config, store)
    worker = Worker(settings, broker, store, storage, models=models)

    # 4. SIGTERM / SIGINT: stop taking jobs, checkpoint and hand back the running one, exit
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if worker.shutdown.is_set():
            # A second signal: the operator will not wait for the checkpoint. The job is not acked,
            # so the broker delivers it again and it resumes from its last stored checkpoint.
            raise KeyboardInterrupt
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # 5. Health and metrics port, then the loop
    health = None
    if settings.http_port:
        health = HealthServer(settings.http_host, settings.http_port, lambda: {
            "status": "stopping" if worker.shutdown.is_set() else "ok", "broker": broker.name,
            "jobs": settings.jobs, "busy": worker.current_task is not None, "handled": worker.handled}).start()
    try:
        worker.run(max_jobs=args.max_jobs)
    finally:
        worker.close()
        broker.close()
        store.close()
        if health is not None:
            health.stop()
    return 0
