"""The deployment files and docs/configuration.md agree with the settings and metrics the code has.

Docker cannot run here, so this is what keeps deploy/ honest: every variable the code reads is
documented, every loramill variable compose sets is one the code reads, every metric the dashboard
charts is one the code exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic_settings import BaseSettings

from loramill.adapters.broker.kafka_config import KafkaSettings
from loramill.adapters.broker.rabbitmq_config import RabbitMQSettings
from loramill.adapters.storage.settings import StorageSettings
from loramill.adapters.store.settings import StoreSettings
from loramill.gateway.bot.settings import BotSettings
from loramill.gateway.settings import GatewaySettings
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.tsuki import TsukiSettings

ROOT = Path(__file__).resolve().parents[3]
SETTINGS: list[type[BaseSettings]] = [GatewaySettings, WorkerSettings, StoreSettings, StorageSettings, KafkaSettings,
                                      RabbitMQSettings, BotSettings, TsukiSettings]
THIRD_PARTY = {"postgres", "kafka", "minio", "minio-init", "prometheus", "grafana"}


def env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f.validation_alias if isinstance(f.validation_alias, str) else (prefix + name).upper()
            for name, f in cls.model_fields.items()}


KNOWN = set().union(*(env_names(cls) for cls in SETTINGS)) | {"LORAMILL_HOME", "HEALTH_PORT"}


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda cls: cls.__name__)
def test_configuration_doc_lists_every_setting(settings: type[BaseSettings]) -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text()))

    assert env_names(settings) - documented == set()


def test_compose_sets_only_settings_the_code_reads() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yml").read_text())
    ours = {name: service for name, service in compose["services"].items() if name not in THIRD_PARTY}

    assert set(ours) == {"api", "worker", "bot"}
    for name, service in ours.items():
        unknown = set(service["environment"]) - KNOWN
        assert unknown == set(), f"{name} sets {unknown}"
    worker = ours["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert worker["command"] == ["worker"] and ours["api"]["environment"]["LORAMILL_WORKERS"] == "0"


def test_dashboard_charts_only_exported_metrics() -> None:
    import loramill.gateway.api.metrics  # noqa: F401 - registers the gateway's metrics
    from loramill.metrics import REGISTRY

    # families without samples yet (labelled, never observed) still count: name + the suffixes they expose
    exported = {m.name + suffix for m in REGISTRY.collect() for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "loramill.json").read_text())
    charted = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"loramill_[a-z_]+", target["expr"])}

    assert charted and charted - exported == set()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    assert all(word in titles for word in ("queue depth", "rates", "duration", "failures"))


def test_dockerfile_runs_as_non_root_with_model_volume() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()

    assert re.search(r"^FROM nvidia/cuda:\S+-runtime", dockerfile, re.M)
    assert re.search(r"^USER loramill$", dockerfile, re.M)
    assert '"/models"' in dockerfile and "VOLUME" in dockerfile
