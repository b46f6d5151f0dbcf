"""Bad training input answers with a clear error naming the problem, before any model work."""

from __future__ import annotations

import math

import pytest

from loramill.engine.training.config import TrainConfig
from loramill.engine.training.run import train
from loramill.errors import DependencyMissing, InvalidInput, UnsupportedHardware
from tests.engine.conftest import train_config


def test_train_refuses_empty_images_folder(tiny_sd15, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput) as err:
        train(train_config(tiny_sd15, empty, tmp_path / "x.safetensors"))
    assert "images" in err.value.message.lower()


def test_train_refuses_missing_images_folder(tiny_sd15, tmp_path):
    with pytest.raises(InvalidInput, match="no such folder"):
        train(train_config(tiny_sd15, tmp_path / "nope", tmp_path / "x.safetensors"))


def test_train_skips_or_names_non_image_file(tiny_sd15, sample_images, tmp_path):
    (sample_images / "notes.jpg").write_text("this is not a picture")
    try:
        result = train(train_config(tiny_sd15, sample_images, tmp_path / "x.safetensors", max_steps=2))
    except InvalidInput as exc:
        assert "notes.jpg" in exc.message
    else:
        assert result.metrics["images"] == 4, "the text file must not be trained on"


def test_train_refuses_unknown_family(tiny_sd15, sample_images, tmp_path):
    with pytest.raises(InvalidInput, match="family: unknown value 'sd3'; choose one of: 'sd15', 'sdxl', 'flux'"):
        train(train_config(tiny_sd15, sample_images, tmp_path / "x.safetensors", family="sd3"))


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("rank", 0, "rank: must be at least 1"),
    ("lr", -1e-4, "lr: must be greater than 0"),
    ("lr", math.nan, "lr: must be a finite number"),
    ("lr", math.inf, "lr: must be a finite number"),
    ("lr", "1e-4", "lr: must be a number, not a string"),
    ("rank", True, "rank: must be a whole number"),
    ("max_steps", -5, "max_steps: must be at least 1"),
    ("resolution", 10, "resolution: must be at least 64"),
    ("optimizer", "sgd", "'adamw', 'adamw8bit', 'prodigy'"),
    ("lr_scheduler", "cyclic", "'constant'"),
    ("trigger", "two words", "trigger: 'two words' has spaces"),
])
def test_config_rejects_bad_option(option, value, fragment, tmp_path):
    values = dict(model="m", images="i", trigger="sks", out="o.safetensors")
    values[option] = value
    with pytest.raises(InvalidInput) as err:
        TrainConfig(**values)
    assert fragment in err.value.message and "--" not in err.value.message  # field ids, not CLI flags
    assert err.value.field == option


def test_config_file_unreadable_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rank = [unclosed")
    with pytest.raises(InvalidInput, match="bad.toml is not readable TOML"):
        TrainConfig.from_sources(str(bad), {"model": "m", "images": "i", "trigger": "t", "out": "o"})
    with pytest.raises(InvalidInput, match="does not exist"):
        TrainConfig.from_sources(str(tmp_path / "missing.toml"), {})


def test_config_file_values_lose_to_flags(tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text('model = "m"\nimages = "i"\ntrigger = "sks"\nout = "o.safetensors"\nrank = 8\nmax-steps = 50\n')
    config = TrainConfig.from_sources(str(cfg), {"rank": 32, "lr": None})
    assert (config.rank, config.max_steps, config.lr) == (32, 50, 1e-4)
    cfg.write_text('model = "m"\nimages = "i"\ntrigger = "sks"\nout = "o"\nranks = 8\n')
    with pytest.raises(InvalidInput, match="unknown training option.*ranks"):
        TrainConfig.from_sources(str(cfg), {})


def test_cuda_only_options_fail_before_work_without_cuda(tiny_sd15, sample_images, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UnsupportedHardware, match="bf16 needs a CUDA GPU"):
        train(train_config(tiny_sd15, sample_images, tmp_path / "x.safetensors", mixed_precision="bf16"))
    with pytest.raises((UnsupportedHardware, DependencyMissing), match="adamw8bit"):
        train(train_config(tiny_sd15, sample_images, tmp_path / "x.safetensors", optimizer="adamw8bit"))
    assert not (tmp_path / "x.run").exists(), "nothing may be written before the check"


def test_prodigy_optimizer_trains(tiny_sd15, sample_images, tmp_path):
    pytest.importorskip("prodigyopt")
    result = train(train_config(tiny_sd15, sample_images, tmp_path / "p.safetensors", optimizer="prodigy", lr=1.0,
                                max_steps=3))
    assert result.metrics["steps"] == 3


def test_resume_refuses_checkpoint_of_other_settings(tiny_sd15, sample_images, tmp_path):
    from loramill.engine.progress import StopRequested

    def stop(p):
        if p.stage == "train" and p.step == 2:
            raise StopRequested()

    with pytest.raises(StopRequested):
        train(train_config(tiny_sd15, sample_images, tmp_path / "a.safetensors"), progress=stop)
    with pytest.raises(InvalidInput, match="different settings"):
        train(train_config(tiny_sd15, sample_images, tmp_path / "a.safetensors", rank=8, resume="latest"))
