"""Export in each layout: the file is written in it, and a layout some tool will not load is named up front."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open

from loramill.engine.training.run import train
from loramill.errors import InvalidInput
from tests.engine.conftest import train_config


def test_flux_sd_scripts_export_writes_bfl_blocks_without_warnings(tiny_models, sample_images, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="loramill.engine.training.run"):
        result = train(train_config(tiny_models["flux"], sample_images, tmp_path / "f.safetensors",
                                    format="sd-scripts", max_steps=1))
    with safe_open(str(result.lora_path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", "lora_unet_double_blocks_0_txt_attn_proj.alpha",
            "lora_unet_single_blocks_0_linear1.lora_down.weight"} <= keys
    assert not any("transformer" in k for k in keys) and meta["loramill.format"] == "sd-scripts"
    assert "layoutWarnings" not in result.metrics and not caplog.records


def test_diffusers_export_for_sd15_warns_naming_kohya(tiny_models, sample_images, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="loramill.engine.training.run"):
        result = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "d.safetensors",
                                    format="diffusers", max_steps=1))
    [note] = result.metrics["layoutWarnings"]
    assert "ComfyUI" in note and "--format kohya" in note
    assert json.loads((tmp_path / "d.run" / "metrics.json").read_text())["layoutWarnings"] == [note]
    assert [r.getMessage() for r in caplog.records] == [f"LoRA layout: {note}"]


def test_sd_scripts_export_refuses_unnamed_flux_module_before_training(tiny_models, sample_images, tmp_path):
    with pytest.raises(InvalidInput, match="^format: .*x_embedder.*export as kohya"):
        train(train_config(tiny_models["flux"], sample_images, tmp_path / "x.safetensors", format="sd-scripts",
                           target_modules=["to_q", "x_embedder"], max_steps=1))
    assert not (tmp_path / "x.run" / "metrics.jsonl").exists()



def _random_flux_lora(std: float) -> dict[str, dict[str, torch.Tensor]]:
    """A rank-4 LoRA on the tiny FLUX transformer's default targets with random up weights (seed 0)."""
    from loramill.engine.families import get_family
    from loramill.engine.models.tiny import build_flux
    from loramill.engine.training import adapters

    transformer = build_flux().transformer
    adapters.add_lora(transformer, 4, 8.0, get_family("flux").DEFAULT_TARGET_MODULES)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)
    return {"transformer": adapters.lora_state(transformer)}


def test_init_lora_reads_an_sd_scripts_flux_file_like_its_kohya_twin(tmp_path):
    """--init-lora from our own sd-scripts FLUX file starts where the same LoRA's kohya file starts."""
    from loramill.engine.families import get_family
    from loramill.engine.lora.files import write_lora
    from loramill.engine.lora.formats import to_layout
    from loramill.engine.training.init_lora import init_states, read_init_lora

    family, layers = get_family("flux"), _random_flux_lora(std=1.0)
    starts = {}
    for fmt in ("kohya", "sd-scripts"):
        path = write_lora(tmp_path / f"{fmt}.safetensors", to_layout(fmt, layers, family.KOHYA_PREFIXES, 4, 8.0),
                          {"loramill.family": "flux"})
        starts[fmt] = init_states(read_init_lora(path, "flux"), layers, family.KOHYA_PREFIXES, 4, 8.0)["transformer"]
    assert set(starts["sd-scripts"]) == set(starts["kohya"]) == set(layers["transformer"])
    for key, value in starts["kohya"].items():
        assert torch.allclose(starts["sd-scripts"][key], value, atol=1e-6), key


def test_generation_renders_an_sd_scripts_flux_file_like_its_kohya_twin(tiny_models, tmp_path):
    """Through loramill's own generation, double and single blocks alike, on the tiny (not FLUX.1-wide) model."""
    import numpy as np

    from loramill.engine.families import get_family
    from loramill.engine.generation.generate import GenerateRequest, Generator
    from loramill.engine.generation.loras import LoraRef
    from loramill.engine.lora.files import write_lora
    from loramill.engine.lora.formats import to_layout

    family, layers = get_family("flux"), _random_flux_lora(std=0.3)
    assert any(k.startswith("single_transformer_blocks.") for k in layers["transformer"])
    generator = Generator(str(tiny_models["flux"]))

    def render(loras: list) -> np.ndarray:
        out = generator.generate(GenerateRequest("a photo of sks", loras=loras, width=64, height=64, steps=3, seed=1))
        return np.asarray(out[0].image, dtype=np.float32) / 255

    images = {}
    for fmt in ("kohya", "sd-scripts"):
        path = write_lora(tmp_path / f"{fmt}.safetensors", to_layout(fmt, layers, family.KOHYA_PREFIXES, 4, 8.0),
                          {"loramill.family": "flux"})
        images[fmt] = render([LoraRef(path)])
    assert np.abs(images["kohya"] - render([])).max() > 0.05, "the LoRA must change the image"
    assert np.abs(images["kohya"] - images["sd-scripts"]).max() <= 1 / 255
