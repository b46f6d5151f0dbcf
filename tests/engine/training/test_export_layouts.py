"""Export in each layout: the file is written in it, and a layout some tool will not load is named up front."""

from __future__ import annotations

import json
import logging

import pytest
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
    with pytest.raises(InvalidInput, match="x_embedder.*--format kohya"):
        train(train_config(tiny_models["flux"], sample_images, tmp_path / "x.safetensors", format="sd-scripts",
                           target_modules=["to_q", "x_embedder"], max_steps=1))
    assert not (tmp_path / "x.run" / "metrics.jsonl").exists()
