"""``loramill bot``: the Telegram bot alone, as its own service beside ``loramill serve`` and the workers.

It needs the same job store, storage and broker settings as the API (it submits jobs through the
API's own flows and reads their outcomes from the job store) and ``LORAMILL_TELEGRAM_TOKEN``.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("loramill.bot")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bot", help="run the Telegram bot alone (needs LORAMILL_TELEGRAM_TOKEN)",
                       description=__doc__)
    p.add_argument("--broker", choices=["sql", "kafka", "rabbitmq"], help="default: LORAMILL_BROKER or sql")
    p.add_argument("--log-format", choices=["json", "text"], help="default: json (env LORAMILL_LOG_FORMAT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from loramill.config import load_config, open_broker, open_storage, open_store
    from loramill.gateway.bot.settings import load_bot_settings
    from loramill.gateway.settings import load_gateway_settings
    from loramill.logs import configure_logging

    # 1. Settings (the token first: without it there is nothing to run), then logging
    bot_settings = load_bot_settings()
    config = load_config(broker=args.broker, log_format=args.log_format)
    configure_logging("DEBUG" if args.verbose else config.worker.log_level, config.worker.log_format)
    config.log_choices()
    from loramill.gateway.bot.app import run_bot

    # 2. Store, storage, broker: the API's
    store = open_store(config)
    storage = open_storage(config)
    broker = open_broker(config, store)

    # 3. The bot until SIGTERM / SIGINT; it finishes the sends it started
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("Telegram bot started")
        await run_bot(bot_settings, store, storage, broker, stop_event=stop, gateway_settings=load_gateway_settings())

    try:
        asyncio.run(main())
    finally:
        broker.close()
        store.close()
    log.info("Telegram bot stopped")
    return 0
