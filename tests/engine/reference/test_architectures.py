"""The reference architectures are real diffusers pipelines: saved, they load and generate through the
normal family code (the trained weights, once shipped, take the same path: models.write_reference_model)."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.families import detect_family, get_family
from loramill.engine.reference import models
from loramill.engine.reference.adherence import base_prompts, generate_scored
from loramill.errors import InvalidInput


@pytest.mark.parametrize(("family", "pipeline"), [("sd15", "StableDiffusionPipeline"), ("flux", "FluxPipeline")])
def test_reference_architecture_loads_and_generates_through_its_family(tmp_path, family, pipeline):
    torch.manual_seed(0)
    models.build(family, {"scaling_factor": 0.5, "shift_factor": 0.1}).save_pretrained(tmp_path)
    assert detect_family(str(tmp_path)) == family
    pipe = get_family(family).load_pipeline(str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == pipeline
    results = generate_scored(pipe, family, base_prompts((0,))[:2], steps=2)
    assert [im.size for _, im, _ in results] == [(64, 64), (64, 64)]
    # Random weights draw nothing the scorer accepts: the gate is what gives adherence its meaning.
    assert not any(score.matches(spec) for spec, _, score in results)


def test_flux_reference_prompts_are_32_t5_tokens(tmp_path):
    pipe = models.build("flux")
    cond = get_family("flux").encode_prompts(pipe, ["a yellow striped triangle on a white background"])
    assert cond["prompt_embeds"].shape[1] == models.CLIP_TOKENS


def test_missing_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(models, "MANIFEST", tmp_path / "reference.json")
    with pytest.raises(InvalidInput, match="make reference-models"):
        models.write_reference_model("sd15", tmp_path / "out")
    (tmp_path / "reference.json").write_text('{"clip": {}}')
    with pytest.raises(InvalidInput, match="sd15 model is not trained yet"):
        models.write_reference_model("sd15", tmp_path / "out2")
