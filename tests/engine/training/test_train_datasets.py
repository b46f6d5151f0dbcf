"""Training reads what the dataset step writes, kohya dataset.toml files, and raw folders (prepared first)."""

from __future__ import annotations

import json

from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.engine.training.run import train
from tests.engine.conftest import train_config


def test_train_prepares_raw_folder_and_skips_bad_files(tiny_sd15, sample_images, tmp_path):
    (sample_images / "notes.jpg").write_text("not an image")
    (sample_images / "copy.png").write_bytes((sample_images / "0.png").read_bytes())
    config = train_config(tiny_sd15, sample_images, tmp_path / "raw.safetensors", max_steps=3)
    result = train(config)
    assert result.metrics["images"] == 4, "the text file and the exact duplicate are left out"
    manifest = json.loads((config.run_dir / "dataset" / "manifest.json").read_text())
    assert manifest, "the dataset step wrote its manifest"


def test_train_runs_from_kohya_dataset_toml(tiny_sd15, sample_images, tmp_path):
    prepared = tmp_path / "prepared"
    prepare_dataset([str(sample_images)], prepared, DatasetConfig(resolution=64, trigger_word="sks", min_images=1,
                                                                  min_side=32, bucket=True))
    tomls = list(prepared.glob("*.toml"))
    assert len(tomls) == 1
    result = train(train_config(tiny_sd15, tomls[0], tmp_path / "toml.safetensors", max_steps=3, prepare="never"))
    assert result.metrics["steps"] == 3 and result.metrics["images"] == 4


def test_train_resumes_from_prepared_raw_folder(tiny_sd15, sample_images, tmp_path):
    from loramill.engine.progress import StopRequested

    def stop(p):
        if p.stage == "train" and p.step == 2:
            raise StopRequested()

    first = train_config(tiny_sd15, sample_images, tmp_path / "r.safetensors", max_steps=4)
    try:
        train(first, progress=stop)
    except StopRequested:
        pass
    resumed = train(train_config(tiny_sd15, sample_images, tmp_path / "r.safetensors", max_steps=4, resume="latest"))
    assert resumed.metrics["steps"] == 4
