"""``loramill serve``: the HTTP API and web page, workers and (with LORAMILL_TELEGRAM_TOKEN) the Telegram bot.

With no configuration this is the embedded default: SQLite, the SQL queue and a folder under
LORAMILL_HOME. PostgreSQL, Kafka or RabbitMQ and S3 are chosen through the environment
(docs/configuration.md); flags override the gateway's own settings.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API, web page, workers (and bot) in one process", description=__doc__)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; env LORAMILL_HOST)")
    p.add_argument("--port", type=int, help="port of the API and web page (default 8080; env LORAMILL_PORT)")
    p.add_argument("--workers", type=int, help="worker threads, 0 for the API only (default 1; env LORAMILL_WORKERS)")
    p.add_argument("--broker", choices=["sql", "kafka", "rabbitmq"], help="default: LORAMILL_BROKER or sql")
    p.add_argument("--log-format", choices=["json", "text"], help="default: json (env LORAMILL_LOG_FORMAT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loramill.config import load_config
    from loramill.gateway.serve import serve
    from loramill.gateway.settings import load_gateway_settings
    from loramill.logs import configure_logging

    # 1. Settings: the worker's (and every adapter's) from the environment, flags winning
    config = load_config(broker=args.broker, log_format=args.log_format)
    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = load_gateway_settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging("DEBUG" if args.verbose else config.worker.log_level, config.worker.log_format)
    # 2. Everything, until SIGINT / SIGTERM
    serve(settings, config)
    return 0
