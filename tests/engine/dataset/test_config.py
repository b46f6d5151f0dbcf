"""DatasetConfig refuses bad options at construction, naming the option and the fix."""

from __future__ import annotations

import pytest

from loramill.engine.dataset.augment import AugmentConfig
from loramill.engine.dataset.config import DatasetConfig, parse_colour
from loramill.errors import InvalidInput

CASES = [
    ({"subject": "cat"}, "subject", "face, object, style"),
    ({"captioner": "gpt4"}, "captioner", "template, florence2, blip, none"),
    ({"resolution": 500}, "resolution", "multiple of 8"),
    ({"trigger_word": ""}, "trigger_word", "rare token"),
    ({"trigger_word": "a, b"}, "trigger_word", "without commas"),
    ({"min_images": 10, "max_images": 5}, "min_images", "must not exceed max_images"),
    ({"bucket_step": 60}, "bucket_step", "multiple of 8"),
    ({"resolution": 1024, "bucket_max_side": 768}, "bucket_max_side", "at least resolution (1024)"),
    ({"resolution": 512, "bucket_min_side": 640}, "bucket_min_side", "up to resolution (512)"),
    ({"near_duplicate_distance": 40}, "near_duplicate_distance", "0 (off) to 32"),
    ({"background": "mauve-ish"}, "background", "#rrggbb"),
    ({"florence2_task": "<OD>"}, "florence2_task", "<DETAILED_CAPTION>"),
    ({"image_format": "gif"}, "image_format", "png, jpg"),
    ({"max_pixels": 0}, "max_pixels", "positive"),
]


@pytest.mark.parametrize("options, field, fix", CASES)
def test_config_rejects_bad_option_naming_it(options: dict, field: str, fix: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        DatasetConfig(**options)
    assert caught.value.field == field and field in caught.value.message and fix in caught.value.message


@pytest.mark.parametrize("text, colour", [("white", (255, 255, 255)), ("#000", (0, 0, 0)),
                                          ("#ff8000", (255, 128, 0)), ("10, 20, 30", (10, 20, 30))])
def test_parse_colour_forms(text: str, colour: tuple[int, int, int]) -> None:
    assert parse_colour(text) == colour
    assert DatasetConfig(background=text).background == colour  # type: ignore[arg-type]


def test_config_bucket_sides_follow_resolution() -> None:
    sdxl = DatasetConfig(resolution=1024)
    assert (sdxl.bucket_min_side, sdxl.bucket_max_side) == (512, 2048)
    assert (DatasetConfig().bucket_min_side, DatasetConfig().bucket_max_side) == (256, 1024)


def test_augment_config_rejects_wild_rotation() -> None:
    with pytest.raises(InvalidInput, match="rotation_degrees"):
        AugmentConfig(rotation_degrees=90)


def test_config_to_dict_is_json_ready() -> None:
    import json

    data = DatasetConfig(style_keywords=("pastel",), augment=AugmentConfig()).to_dict()
    assert json.loads(json.dumps(data))["augment"]["variants"] == 4
