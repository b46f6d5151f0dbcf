"""Captions: the Tsuki template, model captioners through their real loading path, and the trigger word always."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loramill.engine.dataset.captions import LazyCaptioner, finish_caption, has_trigger, template_caption
from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.errors import InvalidInput

from .conftest import jpeg_bytes, photo
from .tiny_captioners import write_tiny_blip, write_tiny_florence2

TSUKI = DatasetConfig(trigger_word="tsuki_advtr", class_word="samoyed dog smiling", subject="object",
                      style_keywords=("thick outlines", "pastel color", "cartoon style", "hand-drawn"))


@pytest.fixture(scope="module")
def tiny_florence2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_florence2(tmp_path_factory.mktemp("florence2"))


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    (folder / "rocket.jpg").write_bytes(jpeg_bytes(photo("rocket")))
    return folder


def test_template_caption_follows_tsuki_structure() -> None:
    assert template_caption(TSUKI) == ("tsuki_advtr, a samoyed dog smiling, white background, thick outlines, "
                                       "pastel color, cartoon style, hand-drawn")


@settings(max_examples=300, deadline=None)
@given(raw=st.text(), prefix=st.sampled_from(["", "photo of ", "tsuki_advtr "]), suffix=st.sampled_from(["", ", 4k"]))
def test_finish_caption_always_contains_trigger(raw: str, prefix: str, suffix: str) -> None:
    config = replace(TSUKI, caption_prefix=prefix, caption_suffix=suffix)
    caption = finish_caption(raw, config)
    assert has_trigger(caption, "tsuki_advtr")
    assert "\n" not in caption


def test_finish_caption_does_not_count_trigger_inside_other_word() -> None:
    config = replace(TSUKI, trigger_word="ohwx")
    assert finish_caption("a photo of ohwxman", config) == "ohwx, a photo of ohwxman"
    assert finish_caption("a photo of ohwx man", config) == "a photo of ohwx man"


def test_prepare_with_tiny_florence2_captions_every_image_with_trigger(tiny_florence2: Path, photos: Path,
                                                                      tmp_path: Path, config: DatasetConfig) -> None:
    report = prepare_dataset([str(photos)], tmp_path / "out",
                             replace(config, captioner="florence2", florence2_model=str(tiny_florence2),
                                     caption_max_tokens=12))
    assert len(report.kept) == 2
    for kept in report.kept:
        assert kept.caption_source == "florence2"
        assert kept.caption.startswith("ohwx, ") and len(kept.caption) > len("ohwx, ")  # trigger + model text
        assert (tmp_path / "out" / kept.file).with_suffix(".txt").read_text().strip() == kept.caption


def test_blip_captioner_output_gets_trigger(tiny_blip: Path, config: DatasetConfig) -> None:
    blip = replace(config, captioner="blip", blip_model=str(tiny_blip), caption_suffix=", photo", caption_max_tokens=12)
    with LazyCaptioner(blip) as cap:
        caption = cap(photo("coffee"))
    assert caption.startswith("ohwx, ") and caption.endswith(", photo")


def test_florence2_missing_model_folder_says_which_option_to_fix(tmp_path: Path, config: DatasetConfig) -> None:
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    with pytest.raises(InvalidInput) as caught:
        LazyCaptioner(replace(config, captioner="florence2", florence2_model=str(empty)))(photo("coffee"))
    assert caught.value.code == "captioner_unavailable"
    assert "--florence2-model" in caught.value.message and "--captioner template" in caught.value.message


def test_florence2_remote_code_checkpoint_refused_with_fix(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "Florence-2-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "florence2", "auto_map": {
        "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}}))
    with pytest.raises(InvalidInput) as caught:
        LazyCaptioner(replace(config, captioner="florence2", florence2_model=str(folder)))(photo("coffee"))
    assert "florence-community/Florence-2-base" in caught.value.message


def test_captioner_model_not_loaded_when_every_image_has_a_caption(photos: Path, tmp_path: Path,
                                                                   config: DatasetConfig) -> None:
    for image in photos.glob("*.jpg"):
        image.with_suffix(".txt").write_text(f"a picture of {image.stem}")
    # the folder does not exist: loading it would fail, so success proves the model was never loaded
    report = prepare_dataset([str(photos)], tmp_path / "out",
                             replace(config, captioner="florence2", florence2_model=str(tmp_path / "absent")))
    assert [k.caption for k in report.kept] == ["ohwx, a picture of coffee", "ohwx, a picture of rocket"]
