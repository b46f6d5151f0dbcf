"""Tsuki requests become loramill generation jobs: defaults as Tsuki's worker has them, fields renamed."""

from __future__ import annotations

import json

import pytest

from loramill.errors import InvalidInput
from loramill.jobs.contracts import parse_job
from loramill.jobs.tsuki import TsukiSettings, is_tsuki, rabbitmq_overrides, rabbitmq_url, translate


def test_translate_request_with_tsuki_defaults() -> None:
    body = json.dumps({"request_id": "r-1", "params": {"prompt": "tsuki_advtr, a cup"}}).encode()

    job = parse_job(translate(body, TsukiSettings(lora="style-1:0.8")))

    assert is_tsuki(body) and not is_tsuki(b'{"taskId": "t", "request_id": "x"}')
    assert (job.task_id, job.user_id, job.prompt) == ("r-1", "tsuki", "tsuki_advtr, a cup")
    assert (job.steps, job.guidance_scale, job.seed, job.negative_prompt) == (50, 7.5, 50, "")
    assert [(lora.id, lora.weight) for lora in job.loras] == [("style-1", 0.8)]


def test_refuse_request_without_prompt_naming_prompt() -> None:
    body = json.dumps({"request_id": "r-2", "params": {"negative_prompt": "blurry"}}).encode()
    with pytest.raises(InvalidInput) as refused:
        parse_job(translate(body, TsukiSettings()))
    assert refused.value.field == "prompt"


def test_rabbitmq_settings_from_tsuki_names_own_names_winning() -> None:
    env = {"RABBITMQ_HOST": "rabbit", "RABBITMQ_DEFAULT_USER": "tsuki", "RABBITMQ_DEFAULT_PASS": "p@ss"}
    assert rabbitmq_url(env) == "amqp://tsuki:p%40ss@rabbit:5672/"
    assert rabbitmq_overrides(env, "tsuki") == {"url": "amqp://tsuki:p%40ss@rabbit:5672/", "plain_queue": True,
                                                "input_queue": "image_generation_queue", "output_queue": ""}
    own = {**env, "LORAMILL_RABBITMQ_URL": "amqp://x", "LORAMILL_RABBITMQ_OUTPUT_QUEUE": "results"}
    assert rabbitmq_overrides(own, "tsuki") == {"input_queue": "image_generation_queue", "plain_queue": True}
