"""LoRA files are user input: pickles are never opened, forged headers never trusted."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from loramill.engine.lora.files import read_lora
from loramill.engine.lora.formats import layout_of, to_diffusers, to_kohya
from loramill.errors import InvalidInput


def _forged(path, header: dict, data: bytes = b"\0" * 16) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_read_lora_refuses_pickle_by_extension_and_content(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(InvalidInput) as err:
        read_lora(evil)
    assert err.value.code == "not_safetensors"
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(InvalidInput) as err:
        read_lora(disguised)
    assert err.value.code == "not_safetensors"


@pytest.mark.parametrize(("header", "fragment"), [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, "past the end"),
    ({"a": {"dtype": "F32", "shape": [1 << 30, 1 << 30], "data_offsets": [0, 16]}}, "declares"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    ({"a": {"dtype": "NOPE", "shape": [2], "data_offsets": [0, 8]}}, "malformed"),
])
def test_read_lora_refuses_forged_header(tmp_path, header, fragment):
    path = tmp_path / "forged.safetensors"
    _forged(path, header)
    with pytest.raises(InvalidInput, match=fragment):
        read_lora(path)


def test_read_lora_refuses_huge_declared_header(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 50) + b"{}")
    with pytest.raises(InvalidInput, match="forged or corrupt"):
        read_lora(path)


def test_read_lora_reads_valid_file_and_family(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 3)}, str(path), metadata={"loramill.family": "sdxl"})
    lora = read_lora(path)
    assert lora.family == "sdxl" and list(lora.tensors) == ["lora_unet_x.lora_down.weight"]


def test_formats_fold_alpha_and_name_modules():
    a, b = torch.ones(2, 3), torch.ones(5, 2)
    layers = {"unet": {"down.0.to_q.lora_A.weight": a, "down.0.to_q.lora_B.weight": b},
              "text_encoder": {"encoder.layers.0.q_proj.lora_A.weight": a}}
    diffusers = to_diffusers(layers, rank=2, alpha=4.0)
    assert torch.equal(diffusers["unet.down.0.to_q.lora_B.weight"], b * 2)
    assert "text_encoder.text_model.encoder.layers.0.q_proj.lora_A.weight" in diffusers
    kohya = to_kohya(layers, {"unet": "lora_unet", "text_encoder": "lora_te"}, alpha=4.0)
    assert set(kohya) == {"lora_unet_down_0_to_q.lora_down.weight", "lora_unet_down_0_to_q.lora_up.weight",
                          "lora_unet_down_0_to_q.alpha", "lora_te_text_model_encoder_layers_0_q_proj.lora_down.weight",
                          "lora_te_text_model_encoder_layers_0_q_proj.alpha"}
    assert float(kohya["lora_unet_down_0_to_q.alpha"]) == 4.0
    assert layout_of(set(kohya)) == "kohya" and layout_of(set(diffusers)) == "diffusers"
