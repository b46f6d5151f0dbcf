"""``DatasetConfig``: every option of dataset preparation, typed and checked once when built."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from loramill.engine.dataset.augment import AugmentConfig
from loramill.engine.dataset.captions import CAPTIONERS, FLORENCE2_TASKS
from loramill.engine.dataset.subjects import SUBJECTS
from loramill.errors import InvalidInput

IMAGE_FORMATS = ("png", "jpg")

_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


def parse_colour(value: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """``"white"``, ``"#ffffff"``, ``"#fff"`` or ``"255,255,255"`` -> ``(255, 255, 255)``."""
    if isinstance(value, tuple):
        colour = value
    else:
        text = value.strip().lower()
        if text in _NAMED_COLOURS:
            return _NAMED_COLOURS[text]
        if re.fullmatch(r"#[0-9a-f]{3}", text):
            colour = tuple(int(c * 2, 16) for c in text[1:])  # type: ignore[assignment]
        elif re.fullmatch(r"#[0-9a-f]{6}", text):
            colour = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[assignment]
        elif re.fullmatch(r"\d{1,3},\d{1,3},\d{1,3}", text.replace(" ", "")):
            colour = tuple(int(c) for c in text.replace(" ", "").split(","))  # type: ignore[assignment]
        else:
            raise InvalidInput(f"background {value!r} is not a colour; use white, black, #rrggbb or r,g,b",
                               code="invalid_option", field="background")
    if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
        raise InvalidInput(f"background {value!r} needs three 0–255 values, e.g. 255,255,255",
                           code="invalid_option", field="background")
    return colour


@dataclass
class DatasetConfig:
    """How ``prepare_dataset`` turns messy uploads into a training set. Sizes are pixels, bytes are bytes."""

    # what the images show, and so how they are framed: "face" | "object" | "style" | None (whole image)
    subject: str | None = None
    resolution: int = 512
    trigger_word: str = "ohwx"
    class_word: str | None = None
    style_keywords: tuple[str, ...] = ()
    # captions: a .txt beside an image always wins; otherwise this captioner
    captioner: str = "template"
    caption_prefix: str = ""
    caption_suffix: str = ""
    florence2_model: str | None = None  # a local folder or hub id; None = florence-community/Florence-2-base
    florence2_task: str = "<DETAILED_CAPTION>"
    blip_model: str | None = None  # None = Salesforce/blip-image-captioning-base
    caption_max_tokens: int = 96  # model captioners; CLIP encoders read 77 tokens, T5 (FLUX) up to 512
    # how many images, and which ones are good enough
    min_images: int = 3
    max_images: int = 1000
    min_side: int = 256
    max_pixels: int = 90_000_000
    max_file_bytes: int = 100 * 2**20
    near_duplicate_distance: int = 6  # Hamming distance on 64-bit perceptual hashes; 0 = exact only
    # framing: one centre crop at resolution², or kohya-style aspect buckets of about that area
    bucket: bool = False
    bucket_min_side: int | None = None  # None = resolution / 2 (256 at 512, as sd-scripts users set it)
    bucket_max_side: int | None = None  # None = resolution × 2 (1024 at 512, 2048 for SDXL's 1024)
    bucket_step: int = 64
    upscale: bool = False
    background: tuple[int, int, int] = (255, 255, 255)
    face_margin: float = 0.6  # added on every side of the face box, as a fraction of its size
    style_max_crops: int = 4  # extra crops of a large artwork in style mode (0 = whole image only)
    image_format: str = "png"
    # sources
    allow_private_urls: bool = False
    url_timeout: float = 30.0
    url_max_bytes: int = 50 * 2**20
    url_retries: int = 3
    url_backoff: float = 1.0
    zip_max_entries: int = 5000
    zip_max_bytes: int = 2 * 2**30
    # what dataset.toml tells the trainer
    num_repeats: int = 1
    batch_size: int = 1
    augment: AugmentConfig | None = None  # recorded for the trainer (flip_aug/color_aug in dataset.toml)

    def __post_init__(self) -> None:
        if isinstance(self.background, str):
            self.background = parse_colour(self.background)
        else:
            self.background = parse_colour(tuple(self.background))  # type: ignore[arg-type]
        self.style_keywords = tuple(k.strip() for k in self.style_keywords if k.strip())
        _one_of("subject", self.subject, tuple(SUBJECTS), allow_none=True)
        _one_of("captioner", self.captioner, tuple(CAPTIONERS))
        _one_of("florence2_task", self.florence2_task, FLORENCE2_TASKS)
        _one_of("image_format", self.image_format, IMAGE_FORMATS)
        if not self.trigger_word.strip() or re.search(r"[,\n\r]", self.trigger_word):
            raise InvalidInput(f"trigger_word {self.trigger_word!r} must be non-empty without commas or newlines; "
                               "use a rare token such as 'ohwx' or 'tsuki_advtr'",
                               code="invalid_option", field="trigger_word")
        self.trigger_word = self.trigger_word.strip()
        if self.resolution < 64 or self.resolution % 8:
            _bad("resolution", self.resolution, "use a multiple of 8 of at least 64, e.g. 512 or 1024")
        for name in ("min_images", "max_images", "min_side", "max_pixels", "max_file_bytes", "url_max_bytes",
                     "zip_max_entries", "zip_max_bytes", "num_repeats", "batch_size", "caption_max_tokens"):
            if getattr(self, name) < 1:
                _bad(name, getattr(self, name), "use a positive number")
        if self.min_images > self.max_images:
            _bad("min_images", self.min_images, f"it must not exceed max_images ({self.max_images})")
        if self.bucket_step < 8 or self.bucket_step % 8:
            _bad("bucket_step", self.bucket_step, "use a multiple of 8, usually 64")
        if self.bucket_min_side is None:
            self.bucket_min_side = max(self.bucket_step, self.resolution // 2 // self.bucket_step * self.bucket_step)
        if self.bucket_max_side is None:
            self.bucket_max_side = self.resolution * 2
        if self.bucket_min_side > self.resolution or self.bucket_min_side < self.bucket_step:
            _bad("bucket_min_side", self.bucket_min_side,
                 f"use a value from bucket_step ({self.bucket_step}) up to resolution ({self.resolution})")
        if self.bucket_max_side < self.resolution:
            _bad("bucket_max_side", self.bucket_max_side, f"use at least resolution ({self.resolution})")
        if not 0 <= self.near_duplicate_distance <= 32:
            _bad("near_duplicate_distance", self.near_duplicate_distance, "use 0 (off) to 32; 6 suits most sets")
        if not 0 <= self.face_margin <= 3:
            _bad("face_margin", self.face_margin, "use 0 to 3 (a fraction of the face size per side)")
        if self.style_max_crops < 0:
            _bad("style_max_crops", self.style_max_crops, "use 0 or more")
        if self.url_timeout <= 0 or self.url_retries < 0 or self.url_backoff < 0:
            _bad("url_timeout", self.url_timeout, "timeouts must be positive, retries and backoff not negative")

    def bucket_sides(self) -> tuple[int, int]:
        """(min, max) bucket side, with the defaults derived from the resolution already applied."""
        return int(self.bucket_min_side or 0), int(self.bucket_max_side or 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, recorded in manifest.json so a dataset says how it was made."""
        data = asdict(self)
        data["background"] = list(self.background)
        data["style_keywords"] = list(self.style_keywords)
        return data


def _one_of(name: str, value: object, supported: tuple[str, ...], *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in supported:
        raise InvalidInput(f"{name}={value!r} is not supported; choose one of: {', '.join(supported)}",
                           code="invalid_option", field=name)


def _bad(name: str, value: object, fix: str) -> None:
    raise InvalidInput(f"{name}={value!r} is invalid: {fix}", code="invalid_option", field=name)
