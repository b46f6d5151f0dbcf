"""Tiny models: real architectures, deterministic for a seed, read by the same loading code."""

from __future__ import annotations

import hashlib

import pytest

from loramill.engine.families import detect_family, get_family
from loramill.engine.models.tiny import write_tiny_model
from loramill.errors import InvalidInput


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def test_tiny_model_is_deterministic_for_a_seed(tiny_models, tmp_path):
    again = write_tiny_model("sd15", tmp_path / "again", seed=0)
    other = write_tiny_model("sd15", tmp_path / "other", seed=1)
    assert _digest(again) == _digest(tiny_models["sd15"])
    assert _digest(other) != _digest(tiny_models["sd15"])


@pytest.mark.parametrize(("family", "pipeline", "denoiser"), [
    ("sd15", "StableDiffusionPipeline", "unet"), ("sdxl", "StableDiffusionXLPipeline", "unet"),
    ("flux", "FluxPipeline", "transformer")])
def test_tiny_model_loads_as_its_real_pipeline(tiny_models, family, pipeline, denoiser):
    assert detect_family(str(tiny_models[family])) == family
    pipe = get_family(family).load_pipeline(str(tiny_models[family]))
    assert type(pipe).__name__ == pipeline and getattr(pipe, denoiser) is not None
    assert (tiny_models[family] / "tokenizer" / "tokenizer.json").exists()


def test_unknown_family_lists_supported(tmp_path):
    with pytest.raises(InvalidInput, match="sd15, sdxl, flux"):
        write_tiny_model("sd3", tmp_path / "x")


def test_load_reports_missing_model(tmp_path):
    with pytest.raises(InvalidInput) as err:
        get_family("sd15").load_pipeline(str(tmp_path / "nowhere"))
    assert err.value.code == "model_not_found"


def test_flux_pads_t5_prompts_to_the_model_tokenizers_declared_length():
    from types import SimpleNamespace

    from loramill.engine.families import flux

    # Real FLUX.1 tokenizers declare 512; an unset maximum reads as a huge number in transformers.
    assert flux.sequence_length(SimpleNamespace(tokenizer_2=SimpleNamespace(model_max_length=32))) == 32
    assert flux.sequence_length(SimpleNamespace(tokenizer_2=SimpleNamespace(model_max_length=10**30))) == 512
    assert flux.sequence_length(None) == 512
    kwargs = flux.generation_kwargs(prompt="p", negative_prompt="", steps=2, guidance=3.5, width=64, height=64,
                                    num_images=1, generator=None,  # type: ignore[arg-type]
                                    pipe=SimpleNamespace(tokenizer_2=SimpleNamespace(model_max_length=32)))
    assert kwargs["max_sequence_length"] == 32
