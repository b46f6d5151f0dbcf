"""dataset.toml for sd-scripts, and load_dataset reading prepared folders, kohya tomls and plain folders."""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from loramill.engine.dataset.augment import AugmentConfig
from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.items import dataset_augment, load_dataset
from loramill.engine.dataset.kohya import dataset_toml, write_dataset_toml
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.errors import InvalidInput

from .conftest import jpeg_bytes, photo

# sd-scripts docs/config_README-en.md: options per level for DreamBooth-style datasets
GENERAL_KEYS = {"shuffle_caption", "caption_extension", "keep_tokens", "flip_aug", "color_aug", "num_repeats",
                "resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale"}
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale", "skip_image_resolution", "subsets"} | GENERAL_KEYS
SUBSET_KEYS = {"image_dir", "caption_extension", "class_tokens", "num_repeats", "keep_tokens", "flip_aug",
               "color_aug", "shuffle_caption", "is_reg", "caption_prefix", "caption_suffix", "random_crop"}


def test_dataset_toml_round_trips_with_documented_keys_only(tmp_path: Path) -> None:
    config = DatasetConfig(trigger_word="tsuki_advtr", class_word="item", bucket=True, num_repeats=10,
                           batch_size=2, augment=AugmentConfig())
    path = tmp_path / "dataset.toml"
    write_dataset_toml(path, config, tmp_path / "images")
    document = tomllib.loads(path.read_text())
    assert document == dataset_toml(config, tmp_path / "images")
    assert set(document["general"]) <= GENERAL_KEYS
    [dataset] = document["datasets"]
    [subset] = dataset["subsets"]
    assert set(dataset) <= DATASET_KEYS and set(subset) <= SUBSET_KEYS
    assert dataset["resolution"] == 512 and dataset["batch_size"] == 2
    assert dataset["enable_bucket"] is True and dataset["bucket_no_upscale"] is True
    assert (dataset["min_bucket_reso"], dataset["max_bucket_reso"], dataset["bucket_reso_steps"]) == (256, 1024, 64)
    assert subset["image_dir"] == str((tmp_path / "images").resolve())
    assert subset["caption_extension"] == ".txt" and subset["num_repeats"] == 10
    assert subset["class_tokens"] == "tsuki_advtr item" and subset["flip_aug"] is True


def test_load_dataset_from_other_tools_toml(tmp_path: Path) -> None:
    """A toml as kohya GUIs write it: relative image_dir, .caption files, class_tokens, [w, h] resolution."""
    images = tmp_path / "train" / "10_ohwx woman"
    images.mkdir(parents=True)
    photo("astronaut").resize((600, 900)).save(images / "a.png")
    photo("coffee").save(images / "b.jpg")
    (images / "a.caption").write_text("ohwx woman in a spacesuit")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "dataset.toml").write_text(
        "[general]\nenable_bucket = true\nbucket_no_upscale = true\n\n"
        "[[datasets]]\nresolution = [512, 512]\nbatch_size = 2\n\n"
        "  [[datasets.subsets]]\n  image_dir = '../train/10_ohwx woman'\n  class_tokens = 'ohwx woman'\n"
        "  num_repeats = 10\n")
    items = load_dataset(tmp_path / "cfg" / "dataset.toml")
    assert [(i.image_path.name, i.caption, i.repeats) for i in items] == [
        ("a.png", "ohwx woman in a spacesuit", 10), ("b.jpg", "ohwx woman", 10)]
    assert items[0].size[1] > items[0].size[0] and items[1].size[0] > items[1].size[1]  # type: ignore[index]


def test_load_dataset_kohya_without_caption_or_class_tokens_names_the_image(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    photo("coffee").save(tmp_path / "imgs" / "lonely.png")
    (tmp_path / "d.toml").write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    with pytest.raises(InvalidInput) as caught:
        load_dataset(tmp_path / "d.toml")
    assert "lonely.png" in caught.value.message and "class_tokens" in caught.value.message
    assert load_dataset(tmp_path / "d.toml", trigger_word="ohwx")[0].caption == "ohwx"


def test_load_dataset_refuses_fine_tuning_metadata_subset(tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_text("[[datasets]]\n[[datasets.subsets]]\nmetadata_file = 'meta.json'\n")
    with pytest.raises(InvalidInput) as caught:
        load_dataset(tmp_path / "d.toml")
    assert "metadata_file" in caught.value.message


def test_load_dataset_plain_folder_enforces_trigger(tmp_path: Path) -> None:
    photo("coffee").save(tmp_path / "1.png")
    photo("rocket").save(tmp_path / "2.jpg")
    (tmp_path / "1.txt").write_text("a cup of coffee")
    items = load_dataset(tmp_path, trigger_word="ohwx")
    assert [(i.caption, i.size) for i in items] == [("ohwx, a cup of coffee", None), ("ohwx", None)]


def test_load_dataset_prepared_folder_reads_edited_captions_and_buckets(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    config = DatasetConfig(trigger_word="ohwx", bucket=True, min_images=1, augment=AugmentConfig(variants=2))
    report = prepare_dataset([str(tmp_path / "in")], tmp_path / "ds", config)
    caption_file = (tmp_path / "ds" / report.kept[0].file).with_suffix(".txt")
    caption_file.write_text("ohwx, my favourite mug\n")
    [item] = load_dataset(tmp_path / "ds")
    assert item.caption == "ohwx, my favourite mug" and item.size == report.kept[0].bucket
    assert report.items()[0].image_path == item.image_path
    assert dataset_augment(tmp_path / "ds") == AugmentConfig(variants=2)
    # the same folder through its dataset.toml, as sd-scripts would read it
    [via_toml] = load_dataset(tmp_path / "ds" / "dataset.toml")
    assert via_toml.image_path == item.image_path and via_toml.size == item.size


def test_load_dataset_moved_folder_finds_images_beside_toml(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    prepare_dataset([str(tmp_path / "in")], tmp_path / "ds", DatasetConfig(min_images=1))
    shutil.move(tmp_path / "ds", tmp_path / "moved")
    [item] = load_dataset(tmp_path / "moved" / "dataset.toml")
    assert item.image_path.parent == tmp_path / "moved" / "images"
    assert Image.open(item.image_path).size == (400, 400)  # coffee is 400 px tall: kept, not upscaled


def test_load_dataset_missing_path_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_dataset(tmp_path / "nothing")
    assert "loramill dataset prepare" in caught.value.message


def test_toml_without_bucketing_has_no_bucket_keys() -> None:
    document = dataset_toml(replace(DatasetConfig(), bucket=False), Path("/data/images"))
    assert document["datasets"][0]["enable_bucket"] is False
    assert "bucket_reso_steps" not in document["datasets"][0]
