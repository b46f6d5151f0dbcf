"""The Tsuki inference worker's clients, accepted as they are (``LORAMILL_PRESET=tsuki``).

Those clients publish ``{"request_id": "...", "params": {"prompt", "negative_prompt",
"num_inference_steps", "guidance_scale", "seed"}}`` to a plain durable queue ``image_generation_queue``
(declared with no arguments), connect with ``RABBITMQ_HOST`` / ``RABBITMQ_DEFAULT_USER`` /
``RABBITMQ_DEFAULT_PASS``, and learn a job's fate from HTTP ``PUT {API_GATEWAY_URL}/update_db/{request_id}``
(``jobs/callbacks.py``), the image at ``generated/{request_id}.png`` behind a public URL.

This module translates such a message into loramill's own generation job (the contract in
``jobs/contracts.py`` is not touched) and holds the preset's settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from loramill.errors import InvalidInput

log = logging.getLogger(__name__)

PRESET = "tsuki"
QUEUE = "image_generation_queue"
# The Tsuki worker's own defaults for a parameter its client leaves out.
DEFAULTS = {"negative_prompt": "", "num_inference_steps": 50, "guidance_scale": 7.5, "seed": 50}
# Tsuki parameter -> loramill generation job field
FIELDS = {"prompt": "prompt", "negative_prompt": "negativePrompt", "num_inference_steps": "steps",
          "guidance_scale": "guidanceScale", "seed": "seed", "width": "width", "height": "height"}


class TsukiSettings(BaseSettings):
    """The preset's settings: Tsuki's own variable names as they are, loramill's for what it adds."""

    model_config = SettingsConfigDict(env_prefix="LORAMILL_TSUKI_", extra="ignore", populate_by_name=True)

    api_gateway_url: str | None = Field(default=None, validation_alias="API_GATEWAY_URL",
                                        description="base URL status updates are PUT to (/update_db/{request_id})")
    user_id: str = Field(default="tsuki", description="userId the jobs run as (owner of their images and of the LoRA)")
    lora: str | None = Field(default=None, description="LoRA every job applies, as id[:weight] (a LoRA of user_id)")
    public_url: str | None = Field(default=None, description="URL prefix of the storage as the public reaches it; "
                                   "image_url = prefix + generated/{request_id}.png (default: the storage's URL)")
    callback_attempts: int = Field(default=8, ge=1, description="tries of one status update before it is given up")
    callback_timeout_seconds: float = Field(default=10.0, gt=0, description="how long one status update may take")


def load_tsuki_settings() -> TsukiSettings:
    """Settings from the environment; a bad value names its variable."""
    try:
        return TsukiSettings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = f"LORAMILL_TSUKI_{str(first['loc'][0]).upper()}" if first["loc"] else "LORAMILL_TSUKI_*"
        raise InvalidInput(f"{name}: {first['msg']}", code="invalid_setting", field=name) from None


def rabbitmq_url(env: Mapping[str, str]) -> str | None:
    """``amqp://user:pass@host:5672/`` from Tsuki's ``RABBITMQ_*`` names, or ``None`` without ``RABBITMQ_HOST``."""
    host = env.get("RABBITMQ_HOST", "").strip()
    if not host:
        return None
    user = quote(env.get("RABBITMQ_DEFAULT_USER") or "guest", safe="")
    password = quote(env.get("RABBITMQ_DEFAULT_PASS") or "guest", safe="")
    port = env.get("RABBITMQ_PORT", "").strip() or "5672"
    return f"amqp://{user}:{password}@{host}:{port}/"


def rabbitmq_overrides(env: Mapping[str, str], preset: str | None) -> dict[str, Any]:
    """RabbitMQ adapter settings the Tsuki names and the preset imply; ``LORAMILL_RABBITMQ_*`` still win."""
    overrides: dict[str, Any] = {}
    url = rabbitmq_url(env)
    if url is not None and "LORAMILL_RABBITMQ_URL" not in env:
        overrides["url"] = url
    if preset == PRESET:
        implied = {"input_queue": QUEUE, "plain_queue": True, "output_queue": ""}
        overrides.update({k: v for k, v in implied.items() if f"LORAMILL_RABBITMQ_{k.upper()}" not in env})
    return overrides


def is_tsuki(body: bytes) -> bool:
    """Whether ``body`` is a Tsuki request (a JSON object with ``request_id`` and no ``taskId``)."""
    if b"request_id" not in body:
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "request_id" in data and "taskId" not in data


def translate(body: bytes, settings: TsukiSettings) -> bytes:
    """The loramill generation job a Tsuki request asks for (as JSON), its defaults filled in.

    Only the shape is changed here; ``parse_job`` checks the values and names the field at fault (a
    ``prompt`` missing from ``params`` fails as the generation job's ``prompt``).
    """
    data = json.loads(body)
    params = data.get("params")
    if not isinstance(params, dict):
        params = {} if params is None else {"prompt": params}  # parse_job then names what is wrong
    unknown = sorted(set(params) - set(FIELDS))
    if unknown:
        log.warning("Tsuki request %s: parameters %s ignored; known: %s", data.get("request_id"),
                    ", ".join(unknown), ", ".join(FIELDS))
    job: dict[str, Any] = {"taskId": data.get("request_id"), "userId": settings.user_id}
    for name, value in {**DEFAULTS, **params}.items():
        if name in FIELDS:
            job[FIELDS[name]] = value
    if job.get("prompt") is None:
        job["prompt"] = ""  # so the message reads as a generation job and is refused naming prompt
    if settings.lora:
        lora_id, _, weight = settings.lora.partition(":")
        job["loras"] = [{"id": lora_id, "weight": float(weight) if weight else 1.0}]
    return json.dumps(job).encode()
