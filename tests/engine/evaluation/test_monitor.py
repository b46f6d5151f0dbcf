"""Evaluation inside a training run: metrics.jsonl lines, sample grids, the best weights exported, stop targets."""

from __future__ import annotations

import json

import pytest

from loramill.engine.evaluation.evaluate import Evaluator, config_from_references
from loramill.engine.evaluation.sampling import RenderSettings
from loramill.engine.families import get_family
from loramill.engine.training.data import load_examples
from loramill.engine.training.run import train
from loramill.errors import InvalidInput
from tests.engine.conftest import FAMILIES, train_config

EVAL = dict(eval_every=4, eval_steps=4, eval_prompts=["a bowl of fruit"])


def test_training_evaluates_and_exports_the_best_checkpoint(tiny_models, subject_images, tiny_clip, tmp_path) -> None:
    config = train_config(tiny_models["sd15"], subject_images, tmp_path / "l.safetensors", max_steps=12, lr=1e-2,
                          clip_model=str(tiny_clip), select_by="clip", **EVAL)
    result = train(config)
    lines = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if "eval" in line]
    assert [e["step"] for e in evaluations] == [4, 8, 12]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, 13))
    best = max(evaluations, key=lambda e: e["eval"]["clip"])
    metrics = json.loads((config.run_dir / "metrics.json").read_text())
    assert metrics["bestStep"] == best["step"] and metrics["consistency"] == best["eval"]["clip"]
    assert metrics["preservation"] == best["eval"]["preservation_clip"]
    assert [e["step"] for e in metrics["evaluations"]] == [4, 8, 12]
    assert sorted(p.name for p in (config.run_dir / "samples").iterdir()) == [
        "base.png", "step-000004.png", "step-000008.png", "step-000012.png"]
    # the exported file is the best evaluation's weights: evaluated again after reload, the same score
    family = get_family("sd15")
    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    pipe.load_lora_weights(str(result.lora_path))
    # the run trained (and evaluated) on the prepared copy of the raw folder
    references = load_examples(str(config.run_dir / "dataset"), trigger="sks", resolution=64, multiple=8)
    again = Evaluator(pipe, family, config_from_references(
        references, clip=str(tiny_clip), preservation_prompts=["a bowl of fruit"],
        render=RenderSettings(steps=4, side=64))).evaluate().metrics
    assert again["clip"] == pytest.approx(best["eval"]["clip"], abs=1e-4)


def test_with_ema_evaluations_measure_the_averaged_weights_that_are_exported(tiny_models, subject_images, tiny_clip,
                                                                              tmp_path) -> None:
    config = train_config(tiny_models["sd15"], subject_images, tmp_path / "l.safetensors", max_steps=12, lr=1e-2,
                          clip_model=str(tiny_clip), ema_decay=0.9, **EVAL)
    result = train(config)
    lines = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [line for line in lines if "eval" in line][-1]
    family = get_family("sd15")
    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    pipe.load_lora_weights(str(result.lora_path))  # the EMA average (ema_export's default)
    references = load_examples(str(config.run_dir / "dataset"), trigger="sks", resolution=64, multiple=8)
    again = Evaluator(pipe, family, config_from_references(
        references, clip=str(tiny_clip), preservation_prompts=["a bowl of fruit"],
        render=RenderSettings(steps=4, side=64))).evaluate().metrics
    # the final evaluation measured the file it exported (before: the raw weights, while the file held EMA's)
    assert again["clip"] == pytest.approx(last["eval"]["clip"], abs=1e-4)
    assert again["divergence"] == pytest.approx(last["eval"]["divergence"], rel=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_stops_at_the_target(family, tiny_models, subject_images, tmp_path) -> None:
    config = train_config(tiny_models[family], subject_images, tmp_path / "l.safetensors", max_steps=40,
                          stop_at="loss_train<=100", **EVAL)
    result = train(config)
    assert result.metrics["steps"] == 4 and result.metrics["stoppedAt"] == "loss_train<=100"
    assert "consistency" not in result.metrics  # no CLIP model given: no CLIP metrics, no made-up ones
    evaluation = result.metrics["evaluation"]
    assert evaluation["divergence"] > 0 and 0 < evaluation["preservation_pixel"] < 1


def test_training_holds_out_images_for_the_loss_when_there_are_enough(tiny_models, tmp_path) -> None:
    from tests.services.models import draw_subject

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(10):
        draw_subject(i).save(folder / f"{i}.png")
    config = train_config(tiny_models["sd15"], folder, tmp_path / "l.safetensors", max_steps=4, prepare="never",
                          **EVAL)
    result = train(config)
    assert result.metrics["images"] == 9  # one in ten held out
    assert "loss_heldout" in result.metrics["evaluation"] and "loss_train" not in result.metrics["evaluation"]


@pytest.mark.parametrize("option, value, message", [
    ("select_by", "sharpness", "select_by: unknown value 'sharpness'; choose one of: 'clip'"),
    ("stop_at", "clip=0.8", "stop_at: .*write METRIC>=NUMBER"),
    ("stop_at", "sharpness>=1", "stop_at: .*unknown metric 'sharpness'"),
    ("eval_every", 0, "select_by: chooses among evaluations, and this run has none; set eval_every"),
])
def test_training_options_refuse_bad_evaluation_values(tiny_models, subject_images, tmp_path, option, value,
                                                       message) -> None:
    values = {**EVAL, "select_by": "clip", option: value}
    with pytest.raises(InvalidInput, match=message) as info:
        train_config(tiny_models["sd15"], subject_images, tmp_path / "l.safetensors", **values)
    assert info.value.field == (option if option != "eval_every" else "select_by")
