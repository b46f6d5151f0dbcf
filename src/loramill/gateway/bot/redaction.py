"""Keep the bot token out of log records, whoever handles them.

Every Bot API URL holds the token (``/bot<token>/sendPhoto``, ``/file/bot<token>/...``) and aiohttp
quotes URLs in its errors, which aiogram logs with their tracebacks. ``loramill.logs`` masks
registered secrets in its own formatters, but a record may also reach other handlers (pytest's,
an operator's); so the records of the loggers that can carry such an error are scrubbed at the
source, message and traceback alike.
"""

from __future__ import annotations

import logging

from loramill.logs import MASK

# aiogram logs through these children (a filter on a parent logger does not see its children's records).
LOGGERS = ("aiogram", "aiogram.dispatcher", "aiogram.event", "aiogram.middlewares", "aiogram.webhook",
           "aiogram.scene", "asyncio", "loramill.bot", "loramill.bot.albums", "loramill.bot.results",
           "loramill.bot.sender")


class TokenScrubber(logging.Filter):
    """Replaces the token in a record's message and traceback with ``***`` (never drops the record)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, MASK), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and self.token in record.exc_text:
            record.exc_text = record.exc_text.replace(self.token, MASK)
            record.exc_info = None  # a formatter would otherwise render the raw traceback again
        return True


def scrub_loggers(token: str) -> None:
    """Scrub ``token`` from every record of the loggers in ``LOGGERS`` (once per token)."""
    for name in LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, TokenScrubber) and f.token == token for f in target.filters):
            target.addFilter(TokenScrubber(token))
