"""Resident base models: the default one loaded in the background at start-up, each load done once."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from loramill.errors import InvalidInput
from loramill.jobs.handlers.models import BaseModel, ResidentModels, preload_default, resolve_base_model
from loramill.jobs.settings import WorkerSettings


def settings_for(models: str, **fields: Any) -> WorkerSettings:
    return WorkerSettings(models=models, **fields)


class GatedGenerator:
    """Stands in for the engine's ``Generator``: counts loads and blocks each one until ``release`` is set."""

    loads = 0
    collector_on: list[bool] = []
    entered = threading.Event()
    release = threading.Event()

    def __init__(self, model: str, **_: Any) -> None:
        type(self).loads += 1
        type(self).collector_on.append(gc.isenabled())
        type(self).entered.set()
        assert type(self).release.wait(30), "the test never released the load"
        self.model, self.family_name, self.adapters = model, "sd15", None


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> type[GatedGenerator]:
    import loramill.engine.generation.generate as generate

    GatedGenerator.loads, GatedGenerator.collector_on = 0, []
    GatedGenerator.entered, GatedGenerator.release = threading.Event(), threading.Event()
    monkeypatch.setattr(generate, "Generator", GatedGenerator)
    return GatedGenerator


def test_preload_default_model_makes_it_resident_without_a_job(tiny_sd15: Path) -> None:
    settings = settings_for(f"sd15={tiny_sd15}", base_model="sd15")
    models = ResidentModels()
    model = resolve_base_model(None, settings)

    thread = preload_default(models, settings)
    assert thread is not None
    thread.join(timeout=300)

    assert models.is_loaded(model)
    first = models.generator(model)
    assert first.family_name == "sd15" and models.generator(model) is first


def test_job_arriving_mid_preload_waits_for_it_and_model_loads_once(gated: type[GatedGenerator]) -> None:
    models, model = ResidentModels(), BaseModel("sd15", "/models/sd15")
    preload = models.preload(model)
    assert gated.entered.wait(30)
    got: list[Any] = []
    job = threading.Thread(target=lambda: got.append(models.generator(model)))
    job.start()

    job.join(timeout=0.3)
    assert job.is_alive() and not got  # the job waits for the load in flight rather than starting its own
    gated.release.set()
    preload.join(timeout=30)
    job.join(timeout=30)

    assert gated.loads == 1 and len(got) == 1 and got[0] is models.generator(model)


def test_failed_preload_is_logged_and_the_job_gets_the_clear_error(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(f"sd15={tmp_path / 'missing'}", base_model="sd15")
    models = ResidentModels()

    with caplog.at_level(logging.WARNING, logger="loramill.jobs.handlers.models"):
        thread = preload_default(models, settings)
        assert thread is not None
        thread.join(timeout=300)

    assert any("preloading base model sd15 failed" in r.getMessage() and "not found" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(InvalidInput) as failure:
        models.generator(resolve_base_model(None, settings))
    assert failure.value.code == "model_not_found"


@pytest.mark.parametrize(("models", "fields"), [
    ("sd15=/models/sd15,flux=/models/flux", {}),  # no default: jobs name their model
    ("sd15=/models/sd15", {"base_model": "sd15", "preload_model": False}),  # turned off
    ("", {}),  # nothing configured
], ids=["no-default", "turned-off", "no-models"])
def test_preload_nothing_without_a_default_or_when_turned_off(models: str, fields: dict[str, Any],
                                                              gated: type[GatedGenerator]) -> None:
    assert preload_default(ResidentModels(), settings_for(models, **fields)) is None
    assert gated.loads == 0


def test_preload_only_model_configured_when_no_default_is_named(gated: type[GatedGenerator]) -> None:
    gated.release.set()
    models = ResidentModels()

    thread = preload_default(models, settings_for("sd15=/models/sd15"))
    assert thread is not None
    thread.join(timeout=30)

    assert models.is_loaded(BaseModel("sd15", "/models/sd15")) and gated.loads == 1


class BrokenGenerator:
    def __init__(self, model: str, **_: Any) -> None:
        assert not gc.isenabled()
        raise OSError("disk went away")


def test_pause_garbage_collector_while_loading_and_resume_after(gated: type[GatedGenerator],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert gc.isenabled()
    gated.release.set()
    ResidentModels().generator(BaseModel("sd15", "/models/sd15"))
    assert gated.collector_on == [False] and gc.isenabled()

    import loramill.engine.generation.generate as generate

    monkeypatch.setattr(generate, "Generator", BrokenGenerator)
    with pytest.raises(OSError):
        ResidentModels().generator(BaseModel("sd15", "/models/sd15"))
    assert gc.isenabled()  # a failed load resumes it too


def test_bf16_resident_generator_trains_on_its_own_fp32_load(tiny_sd15: Path) -> None:
    import torch

    from loramill.engine.generation.serving import ServingSettings

    resident = ResidentModels(serving=ServingSettings(precision="bf16"))
    model = resolve_base_model(None, WorkerSettings(base_model=str(tiny_sd15)))
    pipe, family = resident.pipeline_for_training(model)
    assert family == "sd15" and pipe.unet.dtype == torch.float32
    generator = resident.generator(model)  # still resident, still bf16, not the pipe training got
    assert generator.pipe.unet.dtype == torch.bfloat16 and generator.pipe is not pipe
    fp32 = ResidentModels(serving=ServingSettings(precision="fp32"))
    assert fp32.pipeline_for_training(model)[0] is fp32.generator(model).pipe  # fp32: no second copy


def test_openvino_resident_generator_trains_on_its_own_torch_load(tiny_sd15: Path) -> None:
    pytest.importorskip("openvino", reason="the test extra installs openvino")
    from loramill.engine.generation.serving import ServingSettings

    resident = ResidentModels(serving=ServingSettings(openvino=True))
    model = resolve_base_model(None, WorkerSettings(base_model=str(tiny_sd15)))
    pipe, _ = resident.pipeline_for_training(model)
    assert pipe is not resident.generator(model).pipe and "forward" not in vars(pipe.unet)  # a plain torch UNet
