"""The commands a new user types: models tiny → train → generate, for every family."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from loramill.cli import main


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_cli_tiny_train_generate(family, sample_images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["models", "tiny", family, f"tiny-{family}"]) == 0
    assert main(["train", "--model", f"tiny-{family}", "--images", str(sample_images), "--trigger", "sks",
                 "--max-steps", "30", "--resolution", "64", "--out", "sks.safetensors", "--quiet"]) == 0
    assert main(["generate", "--model", f"tiny-{family}", "--prompt", "a portrait of sks", "--lora",
                 "sks.safetensors:0.9", "--width", "64", "--height", "64", "--steps", "4", "--out", "out/",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "LoRA written to sks.safetensors" in printed
    images = sorted((tmp_path / "out").glob("*.png"))
    assert len(images) == 1 and Image.open(images[0]).size == (64, 64)
    assert (tmp_path / "sks.run" / "metrics.json").exists()


def test_cli_reports_bad_input_with_exit_code(tmp_path, capsys):
    assert main(["train", "--model", "m", "--images", str(tmp_path), "--trigger", "sks", "--out", "o.safetensors",
                 "--rank", "0"]) == 1
    assert "--rank: must be at least 1, not 0" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x", "--lora", "missing.safetensors"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_entry_point_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "loramill.cli", "models", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "tiny" in out.stdout


def test_cli_generate_in_bf16(tmp_path, monkeypatch, capsys):
    import torch

    from loramill.engine.generation import generate

    monkeypatch.chdir(tmp_path)
    assert main(["models", "tiny", "sd15", "tiny-sd15"]) == 0
    made = []
    monkeypatch.setattr(generate.Generator, "__init__", _recording(generate.Generator.__init__, made))
    assert main(["generate", "--model", "tiny-sd15", "--prompt", "a red circle", "--precision", "bf16",
                 "--steps", "2", "--out", "out/", "--quiet"]) == 0
    assert made[0].dtype == torch.bfloat16 and len(list((tmp_path / "out").glob("*.png"))) == 1
    with pytest.raises(SystemExit):
        main(["generate", "--model", "tiny-sd15", "--prompt", "x", "--precision", "fp8"])
    assert "--precision: invalid choice: 'fp8'" in capsys.readouterr().err


def _recording(init, made):  # type: ignore[no-untyped-def]
    def record(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        made.append(self)
    return record
