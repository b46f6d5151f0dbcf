"""``loramill.logs``: transformers' and diffusers' own log lines come out as our JSON, without the set-up
importing them (diffusers pulls in torch, seconds before a worker's first job)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from loramill import logs
from loramill.logs import JsonFormatter

# A fresh interpreter: in the test process the libraries are usually imported already.
SCRIPT = """
import sys
from loramill.logs import configure_logging
configure_logging("INFO", "json")
print("IMPORTED", sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules), flush=True)
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging
diffusers_logging.get_logger("diffusers.pipelines.test").warning("from diffusers")
transformers_logging.get_logger("transformers.test").warning("from transformers")
"""


def test_route_hf_library_logs_as_json_without_importing_them() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    assert "IMPORTED []" in done.stdout
    lines = [line for line in done.stderr.splitlines() if "from diffusers" in line or "from transformers" in line]
    assert len(lines) == 2, done.stderr  # once each: the libraries' own plain stderr handler wrote nothing
    records = [json.loads(line) for line in lines]
    assert {r["logger"] for r in records} == {"diffusers.pipelines.test", "transformers.test"}
    assert all(r["level"] == "warning" for r in records)


# Lines that must be masked whatever their case or script: IGNORECASE matches "ſ" as "s" and the Kelvin
# sign as "k", so a cheap pre-check that only looked at ASCII lower case would let these through.
SECRET_LINES = [
    'password=hunter2hunter2', 'PASSWD: hunter2hunter2', '"S3_SECRET_KEY": "abcdEFGH1234"', "token=tok-123456",
    "api-key=key-123456", "Access_Key: AKIA12345678", "paſſword=hunter2hunter2", "api_\u212aey=key-123456",
    'config {"sasl.password": "pw-123456", "x": 1}', "postgresql://loramill:pg-secret-99@db:5432/loramill",
    "AMQP://guest:rabbit-pw-77@mq/", "see https://example.org/a?token=abc12345&x=1",
]
PLAIN_LINES = ['{"message": "stage fetch took 0.00s", "taskId": "t-1", "seconds": 0.0}', "queued generate job",
               "storage key users/u/generations/t/0.png", "ſome text without a secret", "http://host:8000/v1/jobs"]


def _reference_redact(text: str) -> str:
    """The masking rules applied without any shortcut (what ``redact`` must always equal)."""
    for secret in sorted(logs._secrets, key=len, reverse=True):
        text = text.replace(secret, logs.MASK)
    text = logs._SECRET_PAIR.sub(lambda m: f"{m.group('key')}{m.group('quote')}{logs.MASK}", text)
    return logs._URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{logs.MASK}", text)


def test_redact_masks_exactly_what_the_full_rules_mask() -> None:
    for line in SECRET_LINES + PLAIN_LINES:
        assert logs.redact(line) == _reference_redact(line), line
    for line in SECRET_LINES:
        assert logs.MASK in logs.redact(line), line
    for line in PLAIN_LINES:
        assert logs.redact(line) == line


def test_register_environment_secrets_skips_tokenizers_setting_and_booleans() -> None:
    logs.register_environment_secrets({"TOKENIZERS_PARALLELISM": "false", "LORAMILL_TELEGRAM_TOKEN": "123:tg-tok-77",
                                       "SOME_SECRET_ENABLED": "True", "DB_PASSWORD": "db-pw-4242"})
    record = logging.LogRecord("loramill.test", logging.INFO, __file__, 1, "bot 123:tg-tok-77, db db-pw-4242", (),
                               None)
    record.redelivered = False
    entry = json.loads(JsonFormatter().format(record))  # still JSON: "false" is not masked as a secret
    assert entry["redelivered"] is False
    assert "tg-tok-77" not in entry["message"] and "db-pw-4242" not in entry["message"]
