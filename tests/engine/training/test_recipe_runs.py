"""Runs that continue a LoRA, preserve, replay, mask and train two concepts: the recipe options end to end."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loramill.engine.lora.files import read_lora
from loramill.engine.progress import StopRequested
from loramill.engine.training.data import Example
from loramill.engine.training.masks import example_masks
from loramill.engine.training.run import train
from loramill.errors import InvalidInput
from tests.engine.conftest import train_config
from tests.engine.training.test_masks import _cutout
from tests.engine.training.test_train import _StopAt


def test_continued_run_exports_the_file_unchanged_at_lr_zero_steps(tiny_models, sample_images, tmp_path):
    """One step at a vanishing learning rate: the continued LoRA equals the file it started from."""
    first = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "a.safetensors", max_steps=5)).lora_path
    again = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "b.safetensors", max_steps=1,
                               lr=1e-12, init_lora=str(first))).lora_path
    a, b = load_file(str(first)), load_file(str(again))
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    assert read_lora(again).metadata["loramill.init_lora"] == "a.safetensors"


def test_init_lora_misfits_fail_with_the_option_to_change(tiny_models, sample_images, tmp_path):
    first = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "a.safetensors", max_steps=2)).lora_path
    cases = {
        "rank": ("sd15", dict(rank=8), "rank to 4"),
        "family": ("flux", {}, "trained for sd15"),
    }
    for name, (model, overrides, message) in cases.items():
        config = train_config(tiny_models[model], sample_images, tmp_path / f"{name}.safetensors",
                              init_lora=str(first), max_steps=1, **overrides)
        with pytest.raises(InvalidInput, match=message) as err:
            train(config)
        assert err.value.field == "init_lora"
    foreign = tmp_path / "foreign.safetensors"
    save_file({"model.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(InvalidInput, match="not a LoRA"):
        train(train_config(tiny_models["sd15"], sample_images, tmp_path / "f.safetensors", init_lora=str(foreign),
                           max_steps=1))
    with_te = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "te.safetensors", max_steps=1,
                                 train_text_encoder=True)).lora_path
    with pytest.raises(InvalidInput, match="train_text_encoder"):
        train(train_config(tiny_models["sd15"], sample_images, tmp_path / "g.safetensors", init_lora=str(with_te),
                           max_steps=1))


def test_resume_after_continuing_with_every_recipe_feature_equals_uninterrupted(tiny_models, sample_images,
                                                                                tmp_path):
    first = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "a.safetensors", max_steps=4)).lora_path
    common = dict(max_steps=8, batch_size=2, init_lora=str(first), preserve_weight=1.0, replay_images=str(sample_images),
                  replay_weight=0.5, ema_decay=0.9, lora_plus_ratio=4.0, caption_dropout=0.3, min_snr_gamma=5.0,
                  loss="huber", class_word="face")
    straight = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "s.safetensors", **common))
    interrupted = train_config(tiny_models["sd15"], sample_images, tmp_path / "i.safetensors", **common)
    with pytest.raises(StopRequested):
        train(interrupted, progress=_StopAt(3))
    resumed = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "i.safetensors", resume="latest",
                                 **common))
    with safe_open(str(straight.lora_path), "pt") as a, safe_open(str(resumed.lora_path), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=1e-4, atol=1e-6)
    # EMA export differs from the raw weights of the same run
    raw = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "r.safetensors", ema_export="raw",
                             **common)).lora_path
    with safe_open(str(straight.lora_path), "pt") as a, safe_open(str(raw), "pt") as b:
        assert any(not torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys() if "lora_up" in k)


def test_prior_preservation_generates_class_images_once(tiny_models, sample_images, tmp_path):
    config = train_config(tiny_models["sd15"], sample_images, tmp_path / "p.safetensors", max_steps=3,
                          prior_weight=1.0, class_word="face", class_image_count=3)
    train(config)
    made = sorted(p.name for p in (config.run_dir / "class_images").glob("*.png"))
    assert made == ["class-0000.png", "class-0001.png", "class-0002.png"]
    assert (config.run_dir / "class_images" / "class-0000.txt").read_text() == "a photo of face"


def test_two_concepts_train_in_one_run(tiny_models, sample_images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 20 * i, 40)).save(other / f"{i}.png")
    config = train_config(tiny_models["sd15"], sample_images, tmp_path / "two.safetensors", max_steps=2,
                          concepts=[f"ohwx={other}"])
    result = train(config)
    assert result.metrics["images"] == 7
    with pytest.raises(InvalidInput, match="TRIGGER=FOLDER"):
        train_config(tiny_models["sd15"], sample_images, tmp_path / "x.safetensors", concepts=[str(other)])


def test_flux_recipe_options_train_and_sd_only_ones_are_refused(tiny_models, sample_images, tmp_path):
    config = train_config(tiny_models["flux"], sample_images, tmp_path / "f.safetensors", max_steps=3,
                          timestep_sampling="logit_normal", flow_loss_weighting="cosmap", loss="smooth_l1")
    result = train(config)
    lines = (config.run_dir / "metrics.jsonl").read_text().splitlines()
    assert result.metrics["steps"] == 3 and all(json.loads(line)["loss"] > 0 for line in lines)
    with pytest.raises(InvalidInput, match="applies to sd15, sdxl only") as err:
        train(train_config(tiny_models["flux"], sample_images, tmp_path / "g.safetensors", min_snr_gamma=5.0))
    assert err.value.field == "min_snr_gamma"
    with pytest.raises(InvalidInput, match="applies to flux only") as err:
        train(train_config(tiny_models["sd15"], sample_images, tmp_path / "h.safetensors", timestep_sampling="sigmoid"))
    assert err.value.field == "timestep_sampling"


def test_masked_runs_train_and_refuse_images_without_any_mask(tiny_models, tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i in range(3):
        _cutout(folder / f"{i}.png")
    config = train_config(tiny_models["sd15"], folder, tmp_path / "m.safetensors", max_steps=2, masked_loss="alpha",
                          prepare="never")
    assert train(config).metrics["steps"] == 2
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(plain / "0.png")
    with pytest.raises(InvalidInput, match="no training image has a face") as err:
        example_masks([Example(plain / "0.png", "sks", (64, 64))], "face")
    assert err.value.field == "masked_loss"


@pytest.mark.slow
def test_two_processes_with_preservation_and_replay_train_the_single_process_lora(tiny_models, sample_images,
                                                                                 tmp_path):
    import subprocess

    from tests.engine.training.test_distributed import _assert_same_lora, _cli, _env

    model = tiny_models["sd15"]
    first = train(train_config(model, sample_images, tmp_path / "a.safetensors", max_steps=2)).lora_path
    extra = dict(init_lora=str(first), preserve_weight=1.0, class_word="face", replay_images=str(sample_images))
    single = train(train_config(model, sample_images, tmp_path / "one.safetensors", max_steps=3, batch_size=2,
                                **extra))
    two = tmp_path / "two.safetensors"
    done = subprocess.run(_cli(model, sample_images, two, "--max-steps", "3", "--processes", "2", "--init-lora",
                               str(first), "--preserve-weight", "1", "--class-word", "face", "--replay-images",
                               str(sample_images)), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_lora(single.lora_path, two)
