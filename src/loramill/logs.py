"""JSON logs with the task id on every line, and secrets scrubbed before anything is written.

The worker handles one job at a time, so the task being worked on lives in a context variable that a
``logging.Filter`` copies onto every record: a line logged from deep inside an adapter carries the
task id without anyone passing it along. Records that name a task themselves (``extra={"task_id":
...}``) keep theirs.

Secrets (passwords, secret keys, tokens) must never reach a log line or an event (a log pipeline is
read by more people than the vault is): known secret values are registered at start-up and replaced
wherever they appear, and ``key=value`` / ``"key": "value"`` pairs whose key looks secret are masked.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("loramill_task_id", default=None)

_secrets: set[str] = set()
_secrets_longest_first: tuple[str, ...] = ()  # a longer secret containing a shorter one is masked whole
# password=..., "secret_key": "...", SASL_PASSWORD: ..., token=..., and URLs with user:password@.
_SECRET_PAIR = re.compile(
    r"""(?ix)
    (?P<key>["']?[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[\w.-]*["']?\s*[:=]\s*)
    (?P<quote>["']?)(?P<value>[^\s"',;&}]+)""")
# Every match of _SECRET_PAIR contains one of these words (same case rules: IGNORECASE folds "ſ" to "s" and
# the Kelvin sign to "k", so text that is not ASCII always gets the full scan). Looking for them first
# costs ~1 µs a line where the full scan costs ~200 µs, and nearly no log line has any of them.
_SECRET_PAIR_WORDS = ("pass", "secret", "token", "key")
# TOKENIZERS_PARALLELISM (Hugging Face) is no secret: registering its "false" masked every false in every line.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN(?!IZER)|API_KEY|PRIVATE", re.I)
# Values a secret-named variable may hold that protect nothing and would mask JSON's own literals.
_NOT_SECRETS = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null"})
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<value>[^@\s/]+)(?=@)", re.I)
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "task_id"}


def register_secret(value: object) -> None:
    """Never print ``value`` (a password, a secret key): it is masked wherever it appears in a log line."""
    global _secrets_longest_first
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    if isinstance(text, str) and len(text) >= 4 and text.lower() not in _NOT_SECRETS and text not in _secrets:
        _secrets.add(text)
        _secrets_longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def register_secrets(values: Iterable[object]) -> None:
    """``register_secret`` for each of ``values`` (``None`` and short values are skipped)."""
    for value in values:
        if value is not None:
            register_secret(value)


def register_environment_secrets(environ: Mapping[str, str]) -> None:
    """Mask the values of secret-looking variables (``*PASSWORD*``, ``*SECRET*``…) and passwords inside URLs."""
    for name, value in environ.items():
        if _SECRET_NAME.search(name):
            register_secret(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                continue
            if password:
                register_secret(password)


def redact(text: str) -> str:
    """``text`` with registered secrets and secret-looking ``key=value`` pairs masked.

    Every log line goes through here, so the two regular expressions only run on text that could
    match them (a necessary condition checked first); what gets masked is exactly the same.
    """
    for secret in _secrets_longest_first:
        if secret in text:
            text = text.replace(secret, MASK)
    if not text.isascii() or any(word in text.lower() for word in _SECRET_PAIR_WORDS):
        text = _SECRET_PAIR.sub(lambda m: f"{m.group('key')}{m.group('quote')}{MASK}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}", text)
    return text


@contextmanager
def task_context(task_id: str | None) -> Iterator[None]:
    """Every log line inside the block carries ``task_id``."""
    token = task_id_var.set(task_id)
    try:
        yield
    finally:
        task_id_var.reset(token)


class TaskIdFilter(logging.Filter):
    """Puts the current task id on each record (unless the record already names one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None:
            record.task_id = task_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, taskId, then any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "taskId": getattr(record, "task_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the task id in brackets; secrets masked too."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(task_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


class _LibraryRootLogger(logging.Logger):
    """The root logger of transformers or diffusers, claimed before they are imported: the plain stderr
    handler they attach to it on import is refused, and its records always propagate to ours."""

    @property
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        pass  # the libraries turn propagation off on import; ours is the only handler that should write

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 - the stdlib's name
        if type(hdlr) is not logging.StreamHandler:  # theirs is a bare StreamHandler on stderr
            super().addHandler(hdlr)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger through one stderr handler in ``fmt`` (``json`` or ``text``) at ``level``."""
    formatter = FORMATTERS.get(fmt)
    if formatter is None:
        raise ValueError(f"log format {fmt!r} is not supported; use one of: {', '.join(FORMATTERS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    handler.addFilter(TaskIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # librdkafka, boto and HTTP clients are chatty at INFO; their warnings still come through.
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "aio_pika", "aiormq", "pika", "PIL", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Python warnings and the HF libraries' own stderr handlers would print plain lines among the JSON.
    logging.captureWarnings(True)
    for library in ("transformers", "diffusers"):
        hf_logging = sys.modules.get(f"{library}.utils.logging")
        if hf_logging is not None:
            hf_logging.disable_default_handler()
            hf_logging.enable_propagation()
        else:
            # Importing them only to undo their set-up costs seconds (diffusers pulls in torch) before a
            # worker's first job; claiming their root logger now handles them whenever they arrive.
            logging.getLogger(library).__class__ = _LibraryRootLogger
