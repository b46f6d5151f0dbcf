"""Evaluating a LoRA on the tiny SD 1.5: preservation measures, fixed draws, both layouts, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loramill.cli import main
from loramill.engine.evaluation.evaluate import Evaluator, config_from_references
from loramill.engine.evaluation.preservation import denoiser_divergence
from loramill.engine.evaluation.sampling import RenderSettings, lora_disabled
from loramill.engine.families import get_family
from loramill.engine.training.data import load_examples
from loramill.engine.training.run import train
from tests.engine.conftest import train_config

RENDER = RenderSettings(steps=4, side=64, seeds=(0, 1))
SD15 = get_family("sd15")


def _pipe(model: Path, lora: Path):  # type: ignore[no-untyped-def]
    pipe = SD15.load_pipeline(str(model))
    pipe.load_lora_weights(str(lora))
    return pipe


def _evaluator(pipe, images: Path, clip: Path | None = None) -> Evaluator:  # type: ignore[no-untyped-def]
    references = load_examples(str(images), trigger="sks", resolution=64, multiple=8)
    config = config_from_references(references, clip=str(clip) if clip else None, render=RENDER,
                                    preservation_prompts=["a photo of a city street", "a bowl of fruit"])
    return Evaluator(pipe, SD15, config)


def test_divergence_is_zero_without_the_lora_and_positive_with_it(tiny_models, trained_lora) -> None:
    pipe = _pipe(tiny_models["sd15"], trained_lora.lora_path)
    prompts = ["a photo of a city street"]
    moved = denoiser_divergence(pipe, SD15, prompts, side=64)
    with lora_disabled(pipe):
        assert denoiser_divergence(pipe, SD15, prompts, side=64) == 0.0
    assert moved > 1e-4
    assert denoiser_divergence(pipe, SD15, prompts, side=64) == moved  # switched back on, same fixed draws


def test_evaluate_measures_the_lora_against_the_base(tiny_models, trained_lora, subject_images, tiny_clip) -> None:
    pipe = _pipe(tiny_models["sd15"], trained_lora.lora_path)
    evaluator = _evaluator(pipe, subject_images, tiny_clip)
    first = evaluator.evaluate()
    assert set(first.metrics) == {"clip", "clip_base", "divergence", "preservation_pixel", "preservation_clip",
                                  "loss_train"}
    assert first.metrics["divergence"] > 0 and first.metrics["preservation_pixel"] < 1.0
    assert len(first.renders) == len(first.base_renders) == (len(evaluator.config.prompts) + 2) * 2
    assert evaluator.evaluate().metrics == first.metrics  # fixed seeds and draws: the same numbers
    # the base's own renders, measured as if they were the LoRA's, are perfectly preserved
    with lora_disabled(pipe):
        base = evaluator.evaluate().metrics
    assert base["preservation_pixel"] == 1.0 and base["divergence"] == 0.0
    assert base["clip"] == pytest.approx(first.metrics["clip_base"], abs=1e-6)


def test_kohya_and_diffusers_layouts_score_the_same(tiny_models, subject_images, tmp_path) -> None:
    metrics = {}
    for layout in ("kohya", "diffusers"):
        config = train_config(tiny_models["sd15"], subject_images, tmp_path / f"{layout}.safetensors", max_steps=12,
                              lr=1e-2, format=layout)
        result = train(config)
        metrics[layout] = _evaluator(_pipe(tiny_models["sd15"], result.lora_path), subject_images).evaluate().metrics
    assert metrics["kohya"].keys() == metrics["diffusers"].keys()
    for name, value in metrics["kohya"].items():
        assert metrics["diffusers"][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name


def test_cli_evaluate_prints_table_and_json(tiny_models, trained_lora, subject_images, tiny_clip, tmp_path,
                                            capsys) -> None:
    out = tmp_path / "metrics.json"
    code = main(["evaluate", str(trained_lora.lora_path), "--model", str(tiny_models["sd15"]), "--references",
                 str(subject_images), "--clip", str(tiny_clip), "--resolution", "64", "--steps", "4",
                 "--preservation-prompt", "a bowl of fruit", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["metric", "lora", "base", "better"]
    assert any(line.startswith("clip ") for line in printed)
    report = json.loads(printed[-1])
    assert report["trigger"] == "sks" and report["metrics"] == json.loads(out.read_text())["metrics"]
    assert 0 < report["metrics"]["preservation_pixel"] < 1


def test_cli_evaluate_names_a_missing_lora(tiny_models, subject_images, tmp_path, capsys) -> None:
    code = main(["evaluate", str(tmp_path / "none.safetensors"), "--model", str(tiny_models["sd15"]),
                 "--references", str(subject_images)])
    assert code == 1 and "does not exist" in capsys.readouterr().err
